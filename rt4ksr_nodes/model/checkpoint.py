"""Reading RT4KSR checkpoints: detect the form, read hyperparameters from tensor shapes, build.

Accepted files:
- the released `.pth` (a dict holding `state_dict`, keys prefixed `module.`),
- a bare state dict, train-time or fused (also with the `module.` prefix),
- this project's `.safetensors` files, whose metadata records architecture, form, scale and the
  SHA-256 of the checkpoint they came from.
Pickled files are only ever read with `weights_only=True`.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..files.paths import atomic_write, file_sha256
from .arch import RT4KSR
from .reparam import reparameterize as fuse

ARCHITECTURE = "RT4KSR"
# Containers that wrap the state dict in training checkpoints.
WRAPPER_KEYS = ("state_dict", "params_ema", "params")
# The high-frequency branch of the released configuration: present, never used (see arch.py).
UNUSED_PREFIXES = ("gamma", "hfb.")
SAFETENSORS_SUFFIX = ".safetensors"
# Keys every RT4KSR checkpoint has, whatever its form.
CORE_KEYS = {"head.0.weight", "upsample.0.weight"}


class CheckpointError(ValueError):
    """A file is not a usable RT4KSR checkpoint; the message says which file and why."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds, before a model is built from it."""

    path: Path
    sha256: str
    source_sha256: str
    form: str  # "train" or "fused"
    hyperparameters: dict
    state_dict: dict

    def build(self) -> RT4KSR:
        model = RT4KSR(**self.hyperparameters)
        model.load_state_dict(self.state_dict, strict=True)
        model.source_sha256 = self.source_sha256
        return model.eval().requires_grad_(False)


def _read_safetensors(path: Path, any_architecture: bool = False) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path}: cannot be read as a .safetensors file (truncated or corrupt?): {error}"
        ) from error
    if not any_architecture and metadata.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise CheckpointError(
            f"{path}: its metadata says architecture {metadata['architecture']!r}, "
            f"expected {ARCHITECTURE!r}"
        )
    return tensors, metadata


def _unpickler_reason(error: Exception) -> str:
    """torch's unpickler message without its advice: it suggests weights_only=False, which would
    run whatever code the file holds, and must never reach a user as a way out."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    sentences = [s.strip() for line in text.splitlines() for s in line.split(". ") if s.strip()]
    kept = [
        s.rstrip(".")
        for s in sentences
        if not any(word in s for word in ("weights_only", "Weights only load failed", "trusted source",
                                          "safe_globals", "documentation", "Please use", "Please file"))
    ]
    return "; ".join(kept) or type(error).__name__


def _read_pickle(path: Path) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if "GLOBAL" not in reason.upper():
            raise CheckpointError(
                f"{path}: cannot be read as a PyTorch checkpoint (corrupt or not a "
                f"checkpoint): {reason}"
            ) from None
        raise CheckpointError(
            f"{path}: refused: it holds Python objects or code that only unsafe unpickling "
            f"would load, and this pack reads plain tensors only: {reason}. Use the released "
            "checkpoint or a .safetensors file."
        ) from None
    except Exception as error:  # arbitrary bytes fail anywhere inside the unpickler
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated, corrupt or not a "
            f"checkpoint): {type(error).__name__}: {_unpickler_reason(error)}"
        ) from None
    return _unwrap(content)


def _unwrap(content):
    """The state dict inside a training checkpoint's wrapper dict, else `content` itself."""
    if isinstance(content, dict):
        for key in WRAPPER_KEYS:
            if isinstance(content.get(key), dict):
                return content[key]
    return content


def _strip_prefix(state: dict) -> dict:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _shape(state: dict, key: str, dims: int, path: Path) -> tuple[int, ...]:
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise CheckpointError(f"{path}: {key} has shape {shape}, expected {dims} dimensions")
    return shape


def _hyperparameters(state: dict, form: str, path: Path) -> dict:
    features, head_in, *_ = _shape(state, "head.0.weight", 4, path)
    if head_in % 4 or not head_in:
        raise CheckpointError(
            f"{path}: head.0.weight takes {head_in} channels, expected 4 x image channels "
            "(pixel-unshuffle by 2)"
        )
    in_channels = head_in // 4
    out_channels = _shape(state, "upsample.0.weight", 4, path)[0]
    ratio = math.isqrt(out_channels // in_channels)
    if (
        out_channels % in_channels
        or ratio * ratio * in_channels != out_channels
        or ratio % 2
        or ratio < 4
    ):
        raise CheckpointError(
            f"{path}: upsample.0.weight has {out_channels} output channels, expected "
            f"{in_channels} x (2 x scale)^2 with scale 2 or more"
        )
    indices = {int(m.group(1)) for key in state if (m := re.match(r"body\.(\d+)\.", key))}
    params = {
        "in_channels": in_channels,
        "features": features,
        "blocks": max(indices) + 1 if indices else 0,
        "scale": ratio // 2,
        "fused": form == "fused",
    }
    if form == "train" and "tail.1.expand_conv.weight" in state:
        params["mid_channels"] = _shape(state, "tail.1.expand_conv.weight", 4, path)[0]
    return params


def _check_keys(state: dict, model: RT4KSR, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong)}")
    if problems:
        raise CheckpointError(
            f"{path}: not a complete {model.form}-form RT4KSR state dict "
            f"(x{model.scale}, {model.features} features, {model.blocks} blocks): "
            + "; ".join(problems)
        )


def _block_forms(keys) -> tuple[bool, bool]:
    """Whether the keys hold fused (rep_conv) and whether train-time (expand_conv) blocks."""
    return any(".rep_conv." in key for key in keys), any(".expand_conv." in key for key in keys)


def looks_like_rt4ksr(path: str | os.PathLike) -> bool:
    """Cheap check by key names only (for listing a shared folder such as upscale_models/):
    .safetensors headers are read without tensors, .pth files memory-mapped."""
    path = Path(path)
    try:
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                keys = set(handle.keys())
        else:
            content = _unwrap(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            keys = set(_strip_prefix(content)) if isinstance(content, dict) else set()
    except Exception:  # unreadable files are simply not RT4KSR models
        return False
    return CORE_KEYS <= keys and any(_block_forms(keys))


def parse_state_dict(state, origin: str | os.PathLike) -> tuple[str, dict, dict]:
    """(form, hyperparameters, state dict without the unused keys) of an RT4KSR state dict, from
    its keys and tensor shapes; CheckpointError naming `origin` when it is not a complete one."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{origin}: holds no state dict of tensors (found {type(state).__name__}); expected an "
            "RT4KSR checkpoint"
        )
    state = {
        key: value
        for key, value in _strip_prefix(state).items()
        if not key.startswith(UNUSED_PREFIXES)
    }
    if not CORE_KEYS <= state.keys():
        sample = ", ".join(sorted(state)[:6]) or "none"
        raise CheckpointError(
            f"{origin}: not an RT4KSR checkpoint: it lacks head.0.weight and/or upsample.0.weight "
            f"(its keys begin {sample}); expected the released rt4ksr_x2/x3 .pth, a state dict "
            "of it, or a .safetensors written by rt4ksr_nodes"
        )
    has_fused, has_train = _block_forms(state)
    if has_fused == has_train:
        raise CheckpointError(
            f"{origin}: "
            + (
                "mixes fused (rep_conv) and train-time (expand_conv) blocks"
                if has_fused
                else "has neither fused (rep_conv) nor train-time (expand_conv) conv blocks"
            )
        )
    form = "fused" if has_fused else "train"
    params = _hyperparameters(state, form, origin)
    _check_keys(state, RT4KSR(**params), origin)
    return form, params, state


def fused_from_state_dict(state, origin: str | os.PathLike) -> RT4KSR:
    """The fused model of an RT4KSR state dict (train-time ones are reparameterized)."""
    _, params, state = parse_state_dict(state, origin)
    model = RT4KSR(**params)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False) if model.fused else fuse(model)


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict in a .pth (plain tensors only) or .safetensors file, of any architecture."""
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return _read_safetensors(path, any_architecture=True)[0]
    return _read_pickle(path)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate `path` without building a model."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a folder, not a checkpoint file; give the .pth or .safetensors file "
            "itself"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        state, metadata = _read_safetensors(path)
    else:
        state, metadata = _read_pickle(path), {}
    form, params, state = parse_state_dict(state, path)
    for key, declared in (("form", form), ("scale", str(params["scale"]))):
        if key in metadata and metadata[key] != declared:
            raise CheckpointError(
                f"{path}: metadata says {key}={metadata[key]!r} but the tensors are {declared!r}"
            )
    sha256 = file_sha256(path)
    return Checkpoint(
        path=path,
        sha256=sha256,
        source_sha256=metadata.get("source_sha256", sha256),
        form=form,
        hyperparameters=params,
        state_dict={key: value.float() for key, value in state.items()},
    )


def load_model(path: str | os.PathLike, reparameterize: bool = True) -> RT4KSR:
    """Load an RT4KSR checkpoint as an eval-mode module, fused unless asked otherwise.

    The module has `.scale`, `.form` and a one-line `.description` of what was loaded.
    """
    checkpoint = read_checkpoint(path)
    model = checkpoint.build()
    note = ""
    if reparameterize and not model.fused:
        model = fuse(model)
        note = ", reparameterized on load"
    model.description = (
        f"RT4KSR x{model.scale}, {model.features} features, {model.blocks} blocks, "
        f"{checkpoint.form} form from {checkpoint.path.name} "
        f"(sha256 {checkpoint.sha256[:12]}){note}"
    )
    return model


def _contents(model: RT4KSR) -> tuple[dict, dict]:
    """The tensors and metadata of `model`'s .safetensors file."""
    metadata = {
        "architecture": ARCHITECTURE,
        "form": model.form,
        "scale": str(model.scale),
        "source_sha256": model.source_sha256,
    }
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    return tensors, metadata


def holds_model(path: str | os.PathLike, model: RT4KSR) -> bool:
    """Whether the .safetensors at `path` is `model` as `save_model` writes it (compared by
    content: safetensors does not write metadata in a fixed order, so bytes may differ)."""
    tensors, metadata = _contents(model)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            if (handle.metadata() or {}) != metadata or set(handle.keys()) != set(tensors):
                return False
            return all(torch.equal(handle.get_tensor(key), value) for key, value in tensors.items())
    except (SafetensorError, OSError, ValueError):
        return False


def save_model(model: RT4KSR, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model` as .safetensors with its provenance; atomic, never half-written."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{path}: RT4KSR models are saved as {SAFETENSORS_SUFFIX} only")
    tensors, metadata = _contents(model)
    try:
        with atomic_write(path, overwrite=overwrite) as out:
            out.write(save(tensors, metadata=metadata))
    except FileExistsError:
        raise FileExistsError(
            f"{path}: already exists; choose another name or allow overwrite"
        ) from None
    return path
