"""What every node of the pack shares."""

from ..engine.device import PRECISION_CHOICES

CATEGORY = "image/upscaling/RT4KSR"
MODEL_TYPE = "RT4KSR_MODEL"


def model_input(tooltip: str = "An RT4KSR model from Load RT4KSR Model.") -> tuple:
    return (MODEL_TYPE, {"tooltip": tooltip})


def tile_input() -> tuple:
    return (
        "INT",
        {
            "default": 0,
            "min": 0,
            "max": 16384,
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
            "tooltip": "auto = fp16 on a GPU (indistinguishable, ~58 dB from fp32), fp32 on the "
            "CPU. bf16 is visibly worse (~40 dB).",
        },
    )
