"""Upscale Image to Size: which model passes and resamples reach an exact size, and whether
their images fit in memory, decided before anything runs.

The plan never computes what it will throw away, nor makes an intermediate larger than needed:
- crop: only the source's central region with the target's aspect ratio is upscaled;
- one pass (e.g. 1024 -> 1920 at x2): the model sees the source itself and its output is
  resampled down (source detail is worth its x-fold overshoot);
- several passes: the image before the last pass is resampled to the last pass's input size
  (the target / scale), so no intermediate exceeds the target. Only model-made detail beyond
  the source's resolution is resampled away; the source's own is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..host import bridge
from ..engine.device import available_ram, free_memory
from ..engine.memory import MARGIN, USABLE


@dataclass(frozen=True)
class Plan:
    scale: int
    region: tuple[int, int, int, int]  # left, top, width, height: the part of the source used
    passes: int
    before_last: tuple[int, int] | None  # (w, h) to resample to before the last pass
    scaled: tuple[int, int]  # (w, h) of the region, upscaled, before the crop or the padding
    target: tuple[int, int]

    def pass_inputs(self) -> list[tuple[int, int]]:
        """(w, h) of each model pass's input."""
        w, h = self.region[2:]
        sizes = [(w * self.scale**k, h * self.scale**k) for k in range(self.passes)]
        if self.before_last is not None:
            sizes[-1] = self.before_last
        return sizes

    def upscaled(self) -> tuple[int, int]:
        """(w, h) after the last pass (the region itself without passes)."""
        if not self.passes:
            return self.region[2:]
        w, h = self.pass_inputs()[-1]
        return w * self.scale, h * self.scale


def plan(source: tuple[int, int], target: tuple[int, int], aspect: str, scale: int) -> Plan:
    """The plan to bring a `source` (w, h) image to `target` (w, h): "crop" covers the target
    and trims the overflow evenly, "fit" fits inside it (padded later)."""
    (w, h), (tw, th) = source, target
    if aspect == "crop":
        # The central region with the target's aspect ratio, rounded up so it still covers.
        if w * th > h * tw:  # wider than the target
            rw, rh = min(w, math.ceil(h * tw / th)), h
        else:
            rw, rh = w, min(h, math.ceil(w * th / tw))
        factor = max(tw / rw, th / rh)
        scaled = (max(tw, round(rw * factor)), max(th, round(rh * factor)))
    else:
        rw, rh = w, h
        factor = min(tw / w, th / h)
        scaled = (min(tw, max(1, round(w * factor))), min(th, max(1, round(h * factor))))
    region = ((w - rw) // 2, (h - rh) // 2, rw, rh)
    passes = max(0, math.ceil(math.log(factor, scale) - 1e-9))
    before_last = None
    if passes >= 2:
        last_input = (math.ceil(scaled[0] / scale), math.ceil(scaled[1] / scale))
        reached = (rw * scale ** (passes - 1), rh * scale ** (passes - 1))
        before_last = None if last_input == reached else last_input
    return Plan(scale, region, passes, before_last, scaled, target)


def peak_bytes(steps: Plan, batch: int, itemsize: int) -> int:
    """The most memory the images of `steps` hold at once: float32 RGB batches, plus the
    engine's canvas of one upscaled image in the compute dtype (`itemsize` bytes a value)."""

    def images(size: tuple[int, int], count: int = batch) -> int:
        return count * size[0] * size[1] * 3 * 4

    s = steps.scale
    peaks = []
    previous = steps.region[2:]
    for w, h in steps.pass_inputs():
        if (w, h) != previous:  # the resample before the last pass
            peaks.append(images(previous) + images((w, h)))
        output = (s * w, s * h)
        peaks.append(images((w, h)) + images(output) + images(output, 1) * itemsize // 4)
        previous = output
    last = steps.upscaled()
    resampled = images(steps.scaled) if steps.scaled != last else 0
    cropped_or_padded = images(steps.target) if steps.target != steps.scaled else 0
    peaks.append(images(last) + resampled + cropped_or_padded)
    return max(peaks)


def placement(steps: Plan, batch: int, dtype: torch.dtype, device: torch.device) -> torch.device:
    """Where the intermediate images live: the compute device when they fit there (after
    asking ComfyUI to free memory), else the CPU's RAM. Raises ValueError, before any work,
    when they fit in neither."""
    need = peak_bytes(steps, batch, dtype.itemsize)
    cpu = torch.device("cpu")
    if device != cpu:
        bridge.free_memory(need + MARGIN, device)
        device_free = free_memory(device)
        if need <= USABLE * device_free:
            return device
    ram = available_ram()
    if need <= USABLE * ram:
        return cpu
    (w, h), (tw, th) = steps.region[2:], steps.target
    where = f"{_gb(device_free)} GB free on {device} and " if device != cpu else ""
    raise ValueError(
        f"Upscale Image to Size: {batch} x {w}x{h} to {tw}x{th} needs about {_gb(need)} GB "
        f"for its images ({steps.passes} model passes), but only {where}{_gb(ram)} GB of RAM "
        "are available; choose a smaller target, fewer images at a time, or free memory"
    )


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f}"
