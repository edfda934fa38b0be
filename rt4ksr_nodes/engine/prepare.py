"""The model as the engine runs it: a private copy per (device, dtype), made once and cached."""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from .accel import Accelerated, compile_policy
from .cpu import tune_allocator
from .network import EngineNetwork

# model -> {(device, dtype): (parameter versions, prepared copy, its runner)}. Weak keys: the
# cache never keeps a model alive that its owner has dropped, and with the model go its copies.
# The runner sits beside its copy, not in a cache of its own keyed by the copy: it holds the
# copy, so such a cache would keep both alive for ever.
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepared(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """`model` as the engine runs it (network.EngineNetwork: output before the pixel shuffle)
    on `device` in `dtype`, channels_last, in eval mode.

    The user's model is never touched. In-place weight updates (load_state_dict) bump the
    parameters' version counters, which invalidates the cached copy.
    """
    return _entry(model, device, dtype)[1]


def accelerated(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Accelerated:
    """The runner (CUDA graphs, compile policy) of prepared(model, device, dtype), made with it
    and dropped with it."""
    return _entry(model, device, dtype)[2]


def _entry(model: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple:
    if device.type == "cpu":
        tune_allocator()
    versions = tuple(_version(parameter) for parameter in model.parameters())
    per_model = _cache.setdefault(model, {})
    cached = per_model.get((device, dtype))
    if cached is not None and cached[0] == versions:
        return cached
    with torch.no_grad():
        # From a deep copy: the engine network shares its modules' parameters, which .to()
        # converts in place.
        net = EngineNetwork(copy.deepcopy(model)).eval().requires_grad_(False)
        net = net.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    entry = per_model[(device, dtype)] = (versions, net, Accelerated(net, device, compile_policy()))
    return entry


def _version(parameter: torch.Tensor) -> tuple[int, int]:
    # ComfyUI runs nodes under inference_mode, so a model loaded there holds inference tensors,
    # which have no version counter (and cannot be updated in place outside inference_mode).
    return parameter.data_ptr(), -1 if parameter.is_inference() else parameter._version
