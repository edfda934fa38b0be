"""Node definitions from a ComfyUI server's /object_info JSON, for converting and validating
workflows that use nodes the headless runner cannot run (KSampler, other packs' nodes).

The classes made here only describe a node; they have no FUNCTION, so execution still reports
that such a node needs ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path


class ObjectInfoError(ValueError):
    pass


def load(path: str | Path) -> dict[str, type]:
    """class_type -> definition class for every node in the /object_info file at `path`."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ObjectInfoError(f"{path}: cannot read node definitions: {error}") from error
    if not isinstance(info, dict) or not all(isinstance(v, dict) and "input" in v for v in info.values()):
        raise ObjectInfoError(f"{path}: not a ComfyUI /object_info document")
    return definitions(info)


def definitions(info: dict) -> dict[str, type]:
    return {name: _definition(name, entry) for name, entry in info.items()}


def _definition(name: str, entry: dict) -> type:
    spec = {section: {key: _input(value) for key, value in (entry["input"].get(section) or {}).items()}
            for section in ("required", "optional") if entry["input"].get(section)}
    return type(name, (), {
        "INPUT_TYPES": classmethod(lambda cls: spec),
        "RETURN_TYPES": tuple(entry.get("output") or ()),
        "RETURN_NAMES": tuple(entry.get("output_name") or ()),
        "OUTPUT_IS_LIST": tuple(entry.get("output_is_list") or ()),
        "OUTPUT_NODE": bool(entry.get("output_node")),
        "DISPLAY_NAME": entry.get("display_name") or name,  # the editor falls back to the name
    })


def _input(value) -> tuple:
    """The INPUT_TYPES entry; newer nodes list combo choices as ("COMBO", {"options": [...]}),
    which is turned into the classic (choices, options) form validation understands."""
    kind = value[0]
    options = dict(value[1]) if len(value) > 1 and isinstance(value[1], dict) else {}
    if kind == "COMBO" and "options" in options:
        kind = list(options.pop("options"))
    return (kind, options)
