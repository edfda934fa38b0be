"""Node layer: thin ComfyUI adapters over the engine and the video pipeline (classic node
classes, so the headless runner can use them without ComfyUI).

Imports model, engine, video, files and host (the one bridge to ComfyUI); never runner."""

import functools
import importlib.util
import logging

from ..host import bridge as comfy_bridge
from .batch import BATCH_DISPLAY_NAMES, BATCH_NODES
from .models import RT4KSRModelLoader, RT4KSRReparameterize
from .upscale import RT4KSRUpscale, RT4KSRUpscaleToSize
from .video import RT4KSRUpscaleVideo
from .video_batch import VIDEO_BATCH_DISPLAY_NAMES, VIDEO_BATCH_NODES


@functools.cache
def register_with_spandrel() -> bool:
    """Make RT4KSR files load in spandrel (ComfyUI's core upscale-model nodes) when spandrel is
    installed, once; spandrel is never imported when it is absent. True when spandrel is usable.

    Inside a ComfyUI server this runs at the pack's import; headless only when a core
    upscale-model node needs it (importing spandrel takes over a second, every runner start)."""
    if importlib.util.find_spec("spandrel") is None:
        return False
    try:
        from ..model.spandrel_arch import register
    except Exception as error:  # noqa: BLE001 - a broken spandrel must not break the pack
        logging.getLogger(__name__).warning("RT4KSR: spandrel is installed but cannot be imported (%s)", error)
        return False
    register()
    return True


comfy_bridge.register_model_folder()
if comfy_bridge.in_server():
    register_with_spandrel()

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
