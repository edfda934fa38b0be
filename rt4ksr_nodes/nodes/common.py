"""What every node of the pack shares."""

from ..engine.device import PRECISION_CHOICES
from ..engine.tiling import MIN_TILE

CATEGORY = "image/upscaling/RT4KSR"
MODEL_TYPE = "RT4KSR_MODEL"


def model_input(tooltip: str = "An RT4KSR model from Load RT4KSR Model.") -> tuple:
    return (MODEL_TYPE, {"tooltip": tooltip})


TILE_MAX = 16384


def check_tile(tile_size) -> bool | str:
    """VALIDATE_INPUTS for tile_size: 0, or MIN_TILE to TILE_MAX (a widget's min cannot say "0 or
    at least 32"; a node that validates an input itself also owns its range check). ComfyUI
    calls it with the raw value when its own conversion to INT failed (e.g. "abc" through the
    API): that value is refused as not a whole number, never compared. None: a linked input."""
    if tile_size is None:
        return True
    if not isinstance(tile_size, int) or isinstance(tile_size, bool):
        return f"tile_size must be a whole number, got {tile_size!r:.40}"
    if tile_size == 0 or MIN_TILE <= tile_size <= TILE_MAX:
        return True
    return f"tile_size must be 0 (automatic) or {MIN_TILE} to {TILE_MAX}, got {tile_size}"


def tile_input() -> tuple:
    return (
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": TILE_MAX,
            "step": 32,
            "tooltip": "Tile side in input pixels; 0 = automatic (whole image when it fits in "
            "memory). Any tile size gives the same pixels: tiles carry real context, no seams. "
            "At least 32 when set.",
        },
    )


def precision_input() -> tuple:
    return (
        list(PRECISION_CHOICES),
        {
            "default": "auto",
            "tooltip": "auto = fp16 on a GPU (indistinguishable: ~61 dB from fp32 per pass, "
            "measured on the CPU), fp32 on the CPU. bf16 is visibly worse (~40 dB).",
        },
    )
