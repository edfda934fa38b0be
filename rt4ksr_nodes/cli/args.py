"""Argument types shared by the command-line tools: values checked when they are parsed, so that
a wrong one is a usage error (exit code 2) before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.device import resolve_device

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def device(text: str) -> str:
    """A device this machine has ("auto", "cpu", "cuda:1", ...), kept as typed."""
    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def checkpoint(text: str) -> Path:
    """A checkpoint file's path; a folder is refused, naming the checkpoints it holds."""
    path = Path(text)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a checkpoint file{hint}")
    return path


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
