"""Node layer: thin ComfyUI adapters over the engine (classic node classes, so the headless
runner can use them without ComfyUI)."""

from .. import comfy_bridge
from .batch import BATCH_DISPLAY_NAMES, BATCH_NODES
from .models import RT4KSRModelLoader, RT4KSRReparameterize
from .upscale import RT4KSRUpscale, RT4KSRUpscaleToSize
from .video import RT4KSRUpscaleVideo
from .video_batch import VIDEO_BATCH_DISPLAY_NAMES, VIDEO_BATCH_NODES

comfy_bridge.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "RT4KSRModelLoader": RT4KSRModelLoader,
    "RT4KSRReparameterize": RT4KSRReparameterize,
    "RT4KSRUpscale": RT4KSRUpscale,
    "RT4KSRUpscaleToSize": RT4KSRUpscaleToSize,
    "RT4KSRUpscaleVideo": RT4KSRUpscaleVideo,
    **BATCH_NODES,
    **VIDEO_BATCH_NODES,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RT4KSRModelLoader": "Load RT4KSR Model",
    "RT4KSRReparameterize": "Reparameterize RT4KSR",
    "RT4KSRUpscale": "Upscale Image (RT4KSR)",
    "RT4KSRUpscaleToSize": "Upscale Image to Size (RT4KSR)",
    "RT4KSRUpscaleVideo": "Upscale Video (RT4KSR)",
    **BATCH_DISPLAY_NAMES,
    **VIDEO_BATCH_DISPLAY_NAMES,
}
