"""Shared fixtures: the released models, loaded once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ground_truth import SCALES, checkpoint_path


@pytest.fixture(scope="session")
def checkpoints() -> dict[int, Path]:
    return {scale: checkpoint_path(scale) for scale in SCALES}


@pytest.fixture(scope="session")
def train_models(checkpoints):
    from rt4ksr_nodes import load_model

    return {scale: load_model(path, reparameterize=False) for scale, path in checkpoints.items()}


@pytest.fixture(scope="session")
def fused_models(checkpoints):
    from rt4ksr_nodes import load_model

    return {scale: load_model(path) for scale, path in checkpoints.items()}
