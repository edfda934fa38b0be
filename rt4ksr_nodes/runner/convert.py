"""The editor's saved graph -> API format (what the editor sends to /prompt), from node
definitions, following the ComfyUI frontend's rules:

- widget values are stored in the order of the node's widget inputs (required, then optional;
  socket-only types such as IMAGE and inputs with forceInput have no widget); an extra value
  follows an INT named seed/noise_seed or any input with control_after_generate (the "control
  after generate" widget) and an image_upload combo (the upload button); neither is sent;
- an input with a link takes the link (a widget converted to a socket included), after the
  widget values, keeping the widget's place;
- Reroute passes its input through; a PrimitiveNode's value feeds the widgets it is linked to;
  Note and MarkdownNote are dropped; groups and native reroutes are layout only;
- bypassed nodes (mode 4) pass a link through to their first input of the output's type (the
  input at the same index first); muted nodes (mode 2) are dropped, and so are links from them,
  which validation then reports if the input is required;
- subgraphs (definitions.subgraphs; nodes whose type is a subgraph id) are flattened: inner
  nodes get ids "outer:inner", links through the subgraph's input and output nodes are rejoined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import registry

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
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


# An unconnected subgraph input: the inner node keeps its own widget value.
_UNCONNECTED = object()


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
            if combo and options.get("image_upload"):
                layout.append(None)
    return layout


def to_api(graph: dict, classes: dict[str, type] | None = None) -> dict:
    """The API-format prompt for the editor graph `graph`."""
    classes = registry.node_classes() if classes is None else classes
    subgraphs = {s["id"]: s for s in (graph.get("definitions") or {}).get("subgraphs") or []}
    flat = _Graph()
    _collect(graph, "", subgraphs, flat, ())
    prompt = {}
    for node in sorted(flat.nodes.values(), key=lambda n: n.order):
        if node.type in registry.VIRTUAL_TYPES or node.mode in (MUTED, BYPASSED) or node.type in subgraphs:
            continue
        prompt[node.key] = {
            "inputs": _inputs(node, flat, classes.get(node.type)),
            "class_type": node.type,
            "_meta": {"title": node.title or registry.display_name(node.type)},
        }
    return prompt


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
    """Add the nodes of `graph` (a subgraph instance's when `prefix` is "<instance key>:")."""
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
            order=order + (raw.get("order", position), position),
        )
        flat.nodes[key] = node
        if node.type in subgraphs and node.mode not in (MUTED, BYPASSED):
            _collect(subgraphs[node.type], key + ":", subgraphs, flat, node.order)
    for link in graph.get("links") or []:
        if isinstance(link, dict) and link["target_id"] == SUBGRAPH_OUT:
            flat.outputs[_Ref(prefix[:-1], link["target_slot"])] = ref(link["origin_id"], link["origin_slot"])


def _resolve(source: _Ref | None, flat: _Graph):
    """Follow subgraph boundaries, reroutes and bypassed nodes to the node that really produces
    a value; None when the link leads nowhere (muted node, unconnected bypass)."""
    seen = set()
    while source is not None and source not in seen:
        seen.add(source)
        if source in flat.outputs:
            source = flat.outputs[source]
            continue
        if source.key.startswith("@in:"):
            instance = flat.nodes[source.key[4:]]
            source = instance.inputs[source.slot]["source"] if source.slot < len(instance.inputs) else None
            if source is None:
                return _UNCONNECTED
            continue
        node = flat.nodes.get(source.key)
        if node is None or node.mode == MUTED:
            return None
        if node.type == "Reroute":
            source = node.inputs[0]["source"] if node.inputs else None
        elif node.mode == BYPASSED:
            source = _bypass(node, source.slot)
        elif node.type == "PrimitiveNode":
            values = node.widgets_values or []
            return _Value(values[0]) if values else None
        else:
            return source
    return None


def _bypass(node: _Node, slot: int) -> _Ref | None:
    wanted = node.output_types[slot] if slot < len(node.output_types) else None
    for index in [slot, *range(len(node.inputs))]:
        if index < len(node.inputs) and node.inputs[index].get("type") == wanted:
            return node.inputs[index]["source"]
    return None


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
        produced = _resolve(slot["source"], flat)
        if produced is _UNCONNECTED:
            continue
        if isinstance(produced, _Ref):
            inputs[slot["name"]] = [produced.key, produced.slot]
        elif isinstance(produced, _Value):
            inputs[slot["name"]] = produced.value
        else:
            inputs.pop(slot["name"], None)
    return inputs
