"""The node classes a headless run knows: ComfyUI's core image and video nodes, this pack's nodes, and
any registered by callers (tests, embedding applications)."""

from __future__ import annotations

from ..nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .core_nodes import CORE_DISPLAY_NAMES, CORE_NODES
from .core_upscale import CORE_UPSCALE_DISPLAY_NAMES, CORE_UPSCALE_NODES
from .core_video import CORE_VIDEO_DISPLAY_NAMES, CORE_VIDEO_NODES

_extra: dict[str, type] = {}
_extra_names: dict[str, str] = {}

# Editor-only node types: they shape the graph in the editor and never reach the server.
VIRTUAL_TYPES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}


def node_classes() -> dict[str, type]:
    """class_type -> node class (later sources override earlier: core, pack, registered)."""
    return {**CORE_NODES, **CORE_UPSCALE_NODES, **CORE_VIDEO_NODES, **NODE_CLASS_MAPPINGS, **_extra}


def display_name(class_type: str, classes: dict[str, type] | None = None) -> str:
    """The title the editor gives a node of `class_type` by default."""
    names = {**CORE_DISPLAY_NAMES, **CORE_UPSCALE_DISPLAY_NAMES, **CORE_VIDEO_DISPLAY_NAMES,
             **NODE_DISPLAY_NAME_MAPPINGS, **_extra_names}
    cls = (node_classes() if classes is None else classes).get(class_type)
    return names.get(class_type) or getattr(cls, "DISPLAY_NAME", None) or class_type


def register(class_type: str, cls: type, display: str | None = None) -> None:
    """Make `cls` available to conversion, validation and execution under `class_type`."""
    _extra[class_type] = cls
    if display:
        _extra_names[class_type] = display


def unregister(class_type: str) -> None:
    _extra.pop(class_type, None)
    _extra_names.pop(class_type, None)
