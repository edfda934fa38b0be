"""The model as the engine runs it: a private copy per (device, dtype), made once and cached."""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

# model -> {(device, dtype): (parameter versions, prepared copy)}. Weak keys: the cache never
# keeps a model alive that its owner has dropped.
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepared(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` on `device` in `dtype`, channels_last, in eval mode.

    The user's model is never touched. In-place weight updates (load_state_dict) bump the
    parameters' version counters, which invalidates the cached copy.
    """
    versions = tuple(_version(parameter) for parameter in model.parameters())
    per_model = _cache.setdefault(model, {})
    cached = per_model.get((device, dtype))
    if cached is not None and cached[0] == versions:
        return cached[1]
    with torch.no_grad():
        net = copy.deepcopy(model).eval().requires_grad_(False)
        net = net.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    per_model[(device, dtype)] = (versions, net)
    return net


def _version(parameter: torch.Tensor) -> tuple[int, int]:
    # ComfyUI runs nodes under inference_mode, so a model loaded there holds inference tensors,
    # which have no version counter (and cannot be updated in place outside inference_mode).
    return parameter.data_ptr(), -1 if parameter.is_inference() else parameter._version
