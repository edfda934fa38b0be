"""The node classes a headless run knows: ComfyUI's core image nodes, this pack's nodes, and
any registered by callers (tests, embedding applications)."""

from __future__ import annotations

import importlib

from .core_nodes import CORE_DISPLAY_NAMES, CORE_NODES

_extra: dict[str, type] = {}
_extra_names: dict[str, str] = {}

# Editor-only node types: they shape the graph in the editor and never reach the server.
VIRTUAL_TYPES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}


def _pack() -> tuple[dict, dict]:
    """This pack's node mappings, the batch nodes included even before the pack registers them;
    empty while the node layer is absent (imported lazily, so core nodes work without it)."""
    try:
        nodes = importlib.import_module("rt4ksr_nodes.nodes")
        batch = importlib.import_module("rt4ksr_nodes.nodes.batch")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("rt4ksr_nodes.nodes"):
            raise
        return {}, {}
    classes = {**batch.BATCH_NODES, **getattr(nodes, "NODE_CLASS_MAPPINGS", {})}
    names = {**batch.BATCH_DISPLAY_NAMES, **getattr(nodes, "NODE_DISPLAY_NAME_MAPPINGS", {})}
    return classes, names


def node_classes() -> dict[str, type]:
    """class_type -> node class (later sources override earlier: core, pack, registered)."""
    pack, _ = _pack()
    return {**CORE_NODES, **pack, **_extra}


def display_name(class_type: str) -> str:
    """The title the editor gives a node of `class_type` by default."""
    _, pack_names = _pack()
    names = {**CORE_DISPLAY_NAMES, **pack_names, **_extra_names}
    cls = node_classes().get(class_type)
    return names.get(class_type) or getattr(cls, "DISPLAY_NAME", None) or class_type


def register(class_type: str, cls: type, display: str | None = None) -> None:
    """Make `cls` available to conversion, validation and execution under `class_type`."""
    _extra[class_type] = cls
    if display:
        _extra_names[class_type] = display


def unregister(class_type: str) -> None:
    _extra.pop(class_type, None)
    _extra_names.pop(class_type, None)
