"""Reading a workflow from any of the forms ComfyUI produces.

- API format: {id: {"class_type", "inputs"}} (the editor's "Export (API)").
- A /prompt request body: {"prompt": API, "extra_data": {"extra_pnginfo": {"workflow": …}}}.
- The editor's saved format: {"nodes": […], "links": […], …}.
- A PNG written by ComfyUI (or this runner): text chunks "prompt" (API) and "workflow" (editor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class WorkflowError(ValueError):
    """The workflow file cannot be read or is not a ComfyUI workflow."""


@dataclass
class Workflow:
    prompt: dict | None = None  # API format, when the source has it
    editor: dict | None = None  # the editor's graph, when the source has it
    extra_pnginfo: dict = field(default_factory=dict)  # embedded again in saved PNGs


def load(path: str | Path) -> Workflow:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WorkflowError(f"{path}: cannot read: {error.strerror or error}") from error
    if data.startswith(PNG_MAGIC):
        return _from_png(path)
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkflowError(f"{path}: neither JSON nor a PNG: {error}") from error
    return parse(document, str(path))


def parse(document, source: str = "workflow") -> Workflow:
    if not isinstance(document, dict):
        raise WorkflowError(f"{source}: expected a JSON object, got {type(document).__name__}")
    if is_editor(document):
        check_editor(document, source)
        return Workflow(editor=document, extra_pnginfo={"workflow": document})
    if isinstance(document.get("prompt"), dict):
        extra = (document.get("extra_data") or {}).get("extra_pnginfo") or {}
        workflow = parse(document["prompt"], source)
        workflow.extra_pnginfo = dict(extra) if isinstance(extra, dict) else {}
        return workflow
    if document and all(isinstance(n, dict) and "class_type" in n for n in document.values()):
        for node_id, node in document.items():
            if not isinstance(node["class_type"], str):
                raise WorkflowError(f"{source}: node {node_id}: class_type must be a string")
            if not isinstance(node.get("inputs", {}), dict):
                raise WorkflowError(f"{source}: node {node_id}: inputs must be an object (name: value or link)")
        return Workflow(prompt=document)
    raise WorkflowError(
        f"{source}: not a ComfyUI workflow (expected the editor's saved format, its API export, "
        "a /prompt request body or a PNG saved by ComfyUI)"
    )


def is_editor(document: dict) -> bool:
    return isinstance(document.get("nodes"), list) and "links" in document


def check_editor(graph: dict, source: str) -> None:
    """The structure conversion relies on, in the graph and its subgraph definitions: nodes
    with an id and a type, inputs as a list of slots, links as arrays or objects."""
    definitions = graph.get("definitions") or {}
    subgraphs = definitions.get("subgraphs") or [] if isinstance(definitions, dict) else None
    if not isinstance(subgraphs, list) or not all(isinstance(s, dict) for s in subgraphs):
        raise WorkflowError(f"{source}: definitions.subgraphs must be a list of objects")
    for where, part in [(source, graph)] + [(f"{source}, subgraph {s.get('id')}", s) for s in subgraphs]:
        nodes, links = part.get("nodes") or [], part.get("links") or []
        if not isinstance(nodes, list) or not isinstance(links, list):
            raise WorkflowError(f"{where}: nodes and links must be lists")
        for node in nodes:
            if not isinstance(node, dict):
                raise WorkflowError(f"{where}: node {node!r} is not an object")
            if "id" not in node or not isinstance(node.get("type"), str):
                raise WorkflowError(f"{where}: node {node.get('id', '(no id)')} has no type or no id")
            slots = node.get("inputs") or []
            if not isinstance(slots, list) or not all(isinstance(i, dict) and "name" in i for i in slots):
                raise WorkflowError(f"{where}: node {node['id']}: inputs must be a list of named slots")
        for link in links:
            array = isinstance(link, list) and len(link) >= 3
            if not array and not (isinstance(link, dict) and {"id", "origin_id", "origin_slot", "target_id"} <= set(link)):
                raise WorkflowError(f"{where}: link {link!r} is not [id, origin, origin slot, …] or an object with "
                                    "id, origin_id, origin_slot and target_id")


def _from_png(path: Path) -> Workflow:
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", None) or image.info)
    except OSError as error:
        raise WorkflowError(f"{path}: cannot read PNG: {error}") from error
    chunks = {}
    for key in ("prompt", "workflow"):
        if isinstance(text.get(key), str):
            try:
                chunks[key] = json.loads(text[key])
            except json.JSONDecodeError as error:
                raise WorkflowError(f"{path}: its {key!r} text chunk is not JSON: {error}") from error
    if not chunks:
        raise WorkflowError(f"{path}: this PNG holds no workflow (no 'prompt' or 'workflow' text chunk)")
    editor = chunks.get("workflow") if isinstance(chunks.get("workflow"), dict) else None
    if editor is not None and "prompt" not in chunks:
        check_editor(editor, f"{path} (workflow chunk)")
    prompt = parse(chunks["prompt"], f"{path} (prompt chunk)").prompt if "prompt" in chunks else None
    extra = {k: json.loads(v) for k, v in text.items() if k not in ("prompt",) and _is_json(v)}
    return Workflow(prompt=prompt, editor=editor, extra_pnginfo=extra)


def _is_json(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        json.loads(value)
    except json.JSONDecodeError:
        return False
    return True
