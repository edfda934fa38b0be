"""The editor's saved graph -> API format (what the editor sends to /prompt), from node
definitions, following the ComfyUI frontend's rules:

- widget values are stored in the order of the node's widget inputs (required, then optional;
  socket-only types such as IMAGE and inputs with forceInput have no widget); an extra value
  follows an INT named seed/noise_seed or any input with control_after_generate (the "control
  after generate" widget) and an image/video upload combo (the upload button); neither is sent;
- an input with a link takes the link (a widget converted to a socket included), after the
  widget values, keeping the widget's place;
- Reroute passes its input through (muted or not); a PrimitiveNode's value feeds the widgets it
  is linked to; Note and MarkdownNote are dropped; groups and native reroutes are layout only;
- a link into a bypassed node (mode 4) continues from one of its inputs, chosen by the type the
  link's final target takes (ExecutableNodeDTO's bypass rule, see _bypass_input); muted nodes
  (mode 2) are dropped, and so are links from them, which validation then reports if the input
  is required (ComfyUI then runs only the outputs that do not need them);
- subgraphs (definitions.subgraphs; nodes whose type is a subgraph id) are flattened: inner
  nodes get ids "outer:inner", links through the subgraph's input and output nodes are rejoined.
  As in frontend 1.27, a muted or bypassed instance still sends its inner nodes; bypassing it
  only reroutes links that pass through it;
- the prompt's keys come in JavaScript object order: integer ids ascending, then the others
  (subgraph nodes) in execution order.

tests/data/frontend holds pairs produced by the real frontend that pin these rules down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import registry
from .formats import WorkflowError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
# Combo options that give a file combo the editor's upload button (a widget saved, never sent).
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
MUTED, BYPASSED = 2, 4
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


@dataclass
class _Node:
    key: str
    type: str
    mode: int
    title: str | None
    widgets_values: list | dict | None
    inputs: list[dict]  # editor input slots, each with "source": a reference or None
    output_types: list[str]
    order: tuple = ()


@dataclass(frozen=True)
class _Ref:
    """Output `slot` of node `key`; for key "@in:<instance>", input `slot` of that subgraph
    instance, seen from inside it."""

    key: str
    slot: int


@dataclass
class _Value:
    value: object


# Nothing feeds the input (an unlinked input behind a bypass or subgraph boundary): the
# frontend leaves it out, so a widget keeps its own value.
_NOTHING = object()


@dataclass
class _Graph:
    nodes: dict[str, _Node] = field(default_factory=dict)
    outputs: dict[_Ref, _Ref | None] = field(default_factory=dict)  # subgraph outputs -> inner source


def widget_layout(cls) -> list[str | None]:
    """Names of the values in widgets_values, None for values that are never sent."""
    spec = cls.INPUT_TYPES()
    layout: list[str | None] = []
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            kind = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            options = entry[1] if isinstance(entry, (tuple, list)) and len(entry) > 1 else {}
            options = options if isinstance(options, dict) else {}
            combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
            if options.get("forceInput") or not (combo or kind in WIDGET_TYPES):
                continue
            layout.append(name)
            if options.get("control_after_generate", kind == "INT" and name in SEED_NAMES):
                layout.append(None)
            if combo and any(options.get(k) for k in UPLOAD_OPTIONS):
                layout.append(None)
    return layout


def set_widget(graph: dict, node_id: str, name: str, value, cls) -> bool:
    """Put `value` in the widget `name` of top-level node `node_id`, as the editor would
    store it; False when the graph cannot show it (no such node or widget, or the input is
    linked, so the value would not be what the editor sends)."""
    node = next((n for n in graph.get("nodes") or [] if str(n.get("id")) == node_id), None)
    if node is None or cls is None or name not in widget_layout(cls):
        return False
    if any(slot.get("name") == name and slot.get("link") is not None for slot in node.get("inputs") or []):
        return False
    values = node.get("widgets_values")
    if isinstance(values, dict):
        values[name] = value
        return True
    index = widget_layout(cls).index(name)
    if not isinstance(values, list) or index >= len(values):
        return False
    values[index] = value
    return True


def to_api(graph: dict, classes: dict[str, type] | None = None) -> dict:
    """The API-format prompt for the editor graph `graph`."""
    classes = registry.node_classes() if classes is None else classes
    subgraphs = {s["id"]: s for s in (graph.get("definitions") or {}).get("subgraphs") or []}
    flat = _Graph()
    _collect(graph, "", subgraphs, flat, ())
    prompt = {}
    for node in sorted(flat.nodes.values(), key=_prompt_order):
        if node.type in registry.VIRTUAL_TYPES or node.mode in (MUTED, BYPASSED) or node.type in subgraphs:
            continue
        prompt[node.key] = {
            "inputs": _inputs(node, flat, classes.get(node.type)),
            "class_type": node.type,
            "_meta": {"title": node.title or registry.display_name(node.type, classes)},
        }
    return prompt


def _prompt_order(node: _Node) -> tuple:
    """JavaScript's order for the keys of the object the frontend builds: array-index keys
    ascending, then the rest as inserted."""
    index = node.key.isdigit() and str(int(node.key)) == node.key and int(node.key) < 2**32 - 1
    return (0, int(node.key), ()) if index else (1, 0, node.order)


def _links(graph: dict) -> dict:
    """link id -> (origin id, origin slot); saved as arrays at the top level, objects in
    subgraph definitions and newer schemas."""
    links = {}
    for link in graph.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    return links


def _collect(graph: dict, prefix: str, subgraphs: dict, flat: _Graph, order: tuple) -> None:
    """Add the nodes of `graph` (a subgraph instance's when `prefix` is "<instance key>:").
    Order: top-level nodes by execution order, a subgraph's nodes as listed (getInnerNodes)."""
    links = _links(graph)

    def ref(origin_id, slot) -> _Ref:
        if origin_id == SUBGRAPH_IN:
            return _Ref("@in:" + prefix[:-1], slot)
        return _Ref(prefix + str(origin_id), slot)

    for position, raw in enumerate(graph.get("nodes") or []):
        key = prefix + str(raw["id"])
        inputs = []
        for slot in raw.get("inputs") or []:
            origin = links.get(slot.get("link"))
            inputs.append({**slot, "source": ref(*origin) if origin else None})
        node = _Node(
            key=key,
            type=raw["type"],
            mode=raw.get("mode", 0),
            title=raw.get("title"),
            widgets_values=raw.get("widgets_values"),
            inputs=inputs,
            output_types=[o.get("type") for o in raw.get("outputs") or []],
            order=order + ((position,) if prefix else (raw.get("order", position), position)),
        )
        flat.nodes[key] = node
        if node.type in subgraphs:
            _collect(subgraphs[node.type], key + ":", subgraphs, flat, node.order)
    for link in graph.get("links") or []:
        if isinstance(link, dict) and link["target_id"] == SUBGRAPH_OUT:
            flat.outputs[_Ref(prefix[:-1], link["target_slot"])] = ref(link["origin_id"], link["origin_slot"])


def _resolve(source: _Ref | None, wanted, flat: _Graph):
    """The node output that really feeds an input of type `wanted` linked to `source`,
    following bypassed nodes, reroutes and subgraph boundaries (ExecutableNodeDTO.resolveInput
    and resolveOutput). A _Value for a PrimitiveNode; _NOTHING where the frontend finds nothing
    (the input keeps its widget value, if any); None for a muted node (the input is dropped)."""
    seen = set()
    while source is not None:
        if source in seen:
            raise WorkflowError(f"the editor graph links node {source.key} into itself through bypassed or virtual nodes")
        seen.add(source)
        if source.key.startswith("@in:"):  # a subgraph input: continue outside the instance
            instance = flat.nodes[source.key[4:]]
            if source.slot >= len(instance.inputs):
                return _NOTHING
            slot = instance.inputs[source.slot]
            source, wanted = slot["source"], slot.get("type")
            continue
        node = flat.nodes.get(source.key)
        if node is None:
            return None
        if node.mode == BYPASSED:
            slot = _bypass_input(node, source.slot, wanted)
            if slot is None:
                return _NOTHING
            source, wanted = slot["source"], slot.get("type")
        elif source in flat.outputs:  # a subgraph instance's output: continue inside
            source = flat.outputs[source]
        elif node.type == "Reroute":
            source = node.inputs[0]["source"] if node.inputs else None
        elif node.type == "PrimitiveNode":
            values = node.widgets_values or []
            return _Value(values[0]) if values else _NOTHING
        else:
            return None if node.mode == MUTED else source
    return _NOTHING


def _bypass_input(node: _Node, slot: int, wanted) -> dict | None:
    """The input a bypassed node's output `slot` passes through to a target input of type
    `wanted`: with a wildcard target the input at the same index (or the first); else that
    input if it fits both the output and the target, else the first input of exactly the
    target's type, else the first that fits both."""
    inputs = node.inputs
    if wanted in ("*", ""):
        index = slot if len(inputs) > slot else 0
        return inputs[index] if index < len(inputs) else None
    output = node.output_types[slot] if slot < len(node.output_types) else None

    def fits(slot_type) -> bool:
        return connectable(slot_type, output) and connectable(slot_type, wanted)

    if slot < len(inputs) and fits(inputs[slot].get("type")):
        return inputs[slot]
    exact = [i for i in inputs if i.get("type") == wanted]
    fitting = [i for i in inputs if fits(i.get("type"))]
    return (exact or fitting or [None])[0]


def connectable(a, b) -> bool:
    """LiteGraph.isValidConnection: wildcards, equal types, or comma lists that share a type
    (case-insensitive)."""
    if a in ("", "*", None, 0) or b in ("", "*", None, 0) or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(connectable(x, y) for x in a.split(",") for y in b.split(","))


def _inputs(node: _Node, flat: _Graph, cls) -> dict:
    inputs = {}
    values = node.widgets_values
    if cls is not None and isinstance(values, dict):
        inputs.update({name: values[name] for name in widget_layout(cls) if name in values})
    elif cls is not None and values:
        inputs.update({name: value for name, value in zip(widget_layout(cls), values) if name})
    for slot in node.inputs:
        if slot["source"] is None:
            continue
        produced = _resolve(slot["source"], slot.get("type"), flat)
        if produced is _NOTHING:
            continue
        if isinstance(produced, _Ref):
            inputs[slot["name"]] = [produced.key, produced.slot]
        elif isinstance(produced, _Value):
            inputs[slot["name"]] = produced.value
        else:
            inputs.pop(slot["name"], None)
    return inputs
