"""Exceptions raised by the upscale engine."""


class UpscaleError(RuntimeError):
    """Base class: the engine could not produce an upscaled image."""


class UpscaleCancelled(UpscaleError):
    """The caller's `cancel()` asked to stop; raised between two tiles."""


class UpscaleOutOfMemory(UpscaleError):
    """The device ran out of memory even with the smallest tile the engine will try."""
