"""RT4KSR as a spandrel architecture, so that ComfyUI's core Load Upscale Model and Upscale
Image (using Model) run RT4KSR files. Importing this module imports spandrel: only
`register_with_spandrel` (which looks before it imports) is called at the pack's import.

Detection is by keys and shapes: a state dict is RT4KSR when it is exactly what an RT4KSR built
from its own shapes would hold (train-time or fused, released extra keys allowed), so another
architecture's state dict never matches. Train-time models are fused on load (same output).
"""

from __future__ import annotations

from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)

from .arch import RT4KSR
from .checkpoint import ARCHITECTURE, CheckpointError, fused_from_state_dict, parse_state_dict


def is_rt4ksr(state_dict: StateDict) -> bool:
    try:
        parse_state_dict(state_dict, "state dict")
    except CheckpointError:
        return False
    return True


class RT4KSRArch(Architecture[RT4KSR]):
    def __init__(self) -> None:
        super().__init__(id=ARCHITECTURE, name=ARCHITECTURE, detect=is_rt4ksr)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[RT4KSR]:
        model = fused_from_state_dict(state_dict, "RT4KSR state dict")
        return ImageModelDescriptor(
            model,
            model.state_dict(),
            architecture=self,
            purpose="SR",
            tags=[f"{model.features}nf", f"{model.blocks}nb"],
            supports_half=True,  # ~58 dB from fp32 on a GPU
            supports_bfloat16=False,  # runs, but ~40 dB from fp32: not offered to apps that pick it silently
            scale=model.scale,
            input_channels=model.in_channels,
            output_channels=model.in_channels,
            # pixel-unshuffle by 2: spandrel pads odd sizes (reflect) and crops the result
            size_requirements=SizeRequirements(multiple_of=2),
            tiling=ModelTiling.SUPPORTED,
        )


def register(registry: ArchRegistry = MAIN_REGISTRY) -> bool:
    """Add RT4KSR to `registry`; False when an RT4KSR is already there (the pack imported twice,
    or a spandrel that knows RT4KSR itself), which is kept."""
    return bool(registry.add(ArchSupport.from_architecture(RT4KSRArch()), ignore_duplicates=True))
