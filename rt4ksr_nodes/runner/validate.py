"""Checking an API-format prompt before anything runs, as ComfyUI's validate_prompt does, but
collecting every problem instead of stopping at the first one per output."""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass

from ..files.paths import brief, shorten

CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


@dataclass(frozen=True)
class Problem:
    node_id: str
    class_type: str
    input_name: str | None
    kind: str  # unknown_class, missing_input, bad_link, type_mismatch, invalid_value,
    # out_of_range, not_in_list, rejected_value, cycle, no_outputs
    message: str

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        field = f", input {self.input_name!r}" if self.input_name else ""
        return f"{where}{field}: {self.message}"


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def input_spec(definitions: dict) -> dict[str, tuple[str, object, dict]]:
    """name -> (category, type, options) for the required and optional inputs of a node class,
    from its INPUT_TYPES()."""
    spec = {}
    for category in ("required", "optional"):
        for name, entry in (definitions.get(category) or {}).items():
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            spec[name] = (category, entry[0], options)
    return spec


def types_match(received, expected) -> bool:
    """An output of type `received` may feed an input of type `expected`."""
    if received == "*" or expected == "*" or received == expected:
        return True
    if isinstance(expected, (list, tuple)) or expected == "COMBO":
        return isinstance(received, (list, tuple)) or received == "COMBO"
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def output_nodes(prompt: dict, classes: dict) -> list[str]:
    return [i for i, n in prompt.items() if getattr(classes.get(n.get("class_type")), "OUTPUT_NODE", False) is True]


def needed_nodes(prompt: dict, outputs: list[str]) -> set[str]:
    """The outputs and every node they depend on."""
    needed, stack = set(), list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in needed or node_id not in prompt:
            continue
        needed.add(node_id)
        stack.extend(str(v[0]) for v in prompt[node_id].get("inputs", {}).values() if is_link(v))
    return needed


def validate(prompt: dict, classes: dict) -> list[Problem]:
    """Every problem of `prompt`; values are converted to their input's type in place (as
    ComfyUI does: "2" for an INT becomes 2)."""
    problems = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not class_type:
            problems.append(Problem(node_id, "?", None, "unknown_class", "the node has no class_type"))
        elif class_type not in classes:
            close = difflib.get_close_matches(class_type, classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(Problem(node_id, class_type, None, "unknown_class",
                                    f"unknown node type {class_type!r}{hint}: it needs ComfyUI or the node pack that provides it"))
    outputs = output_nodes(prompt, classes)
    if not outputs:
        problems.append(Problem("", "", None, "no_outputs", "the workflow has no output node (such as Save Image)"))
    needed = needed_nodes(prompt, outputs)
    for node_id in sorted(needed, key=_id_order):
        cls = classes.get(prompt[node_id].get("class_type"))
        if cls is not None:
            problems.extend(_check_node(node_id, prompt, cls, classes))
    problems.extend(_cycles(prompt, needed))
    return problems


def runnable_outputs(prompt: dict, classes: dict, problems: list[Problem]) -> list[str]:
    """The output nodes that run despite `problems`, as ComfyUI's server decides: none when a
    node has no or an unknown class (the whole prompt is refused), else every output none of
    whose nodes has a problem; the others are left out."""
    if any(p.kind in ("unknown_class", "no_outputs") for p in problems):
        return []
    broken = {p.node_id for p in problems}
    return [o for o in output_nodes(prompt, classes) if not needed_nodes(prompt, [o]) & broken]


def _id_order(node_id: str):
    return [int(p) if p.isdigit() else 0 for p in node_id.split(":")], node_id


def _check_node(node_id: str, prompt: dict, cls, classes: dict) -> list[Problem]:
    node = prompt[node_id]
    inputs = node.setdefault("inputs", {})
    class_type = node["class_type"]
    custom = getattr(cls, "VALIDATE_INPUTS", None)
    custom_args = set(inspect.signature(custom).parameters) if custom else set()
    problems = []

    def problem(name, kind, message):
        problems.append(Problem(node_id, class_type, name, kind, message))

    spec = input_spec(cls.INPUT_TYPES())
    strangers = [key for key in inputs if key not in spec]  # ignored, as ComfyUI does
    for name, (category, kind, options) in spec.items():
        if name not in inputs:
            if category == "required":
                close = difflib.get_close_matches(name, strangers, n=1)
                hint = f"; the node has an input {close[0]!r} it does not take: a misspelling?" if close else ""
                problem(name, "missing_input", f"required input is missing (not connected and no value{hint})")
            continue
        value = inputs[name]
        if isinstance(value, list):
            _check_link(name, value, kind, prompt, classes, problem)
            continue
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        if value is None:  # null in the JSON: no value (a node's check would take it for a link)
            problem(name, "missing_input", "the value is null; give a value or connect the input")
            continue
        if isinstance(kind, str) and kind in CONVERTERS:
            try:
                value = inputs[name] = CONVERTERS[kind](value)
            except (TypeError, ValueError) as error:
                problem(name, "invalid_value", f"{brief(value)} is not a valid {kind}: {shorten(str(error), 200)}")
                continue
        if kind == "FLOAT" and math.isnan(value):  # NaN passes every min/max comparison
            problem(name, "invalid_value", "NaN is not a valid FLOAT")
            continue
        if name in custom_args:
            continue
        if "min" in options and value < options["min"]:
            problem(name, "out_of_range", f"{value} is smaller than the minimum {options['min']}")
        elif "max" in options and value > options["max"]:
            problem(name, "out_of_range", f"{value} is bigger than the maximum {options['max']}")
        elif isinstance(kind, (list, tuple)) and value not in kind:
            shown = list(kind) if len(kind) <= 20 else f"a list of {len(kind)} choices"
            problem(name, "not_in_list", f"{brief(value)} is not one of {shorten(str(shown), 1000)}")
    if custom and not problems:
        arguments = {k: (None if isinstance(inputs.get(k), list) else inputs.get(k)) for k in custom_args if k in inputs}
        try:
            verdict = custom(**arguments)
        except Exception as error:  # noqa: BLE001 - a value the node's check cannot handle
            verdict = f"the node's check failed on these values: {type(error).__name__}: {shorten(str(error), 500)}"
        if verdict is not True:
            problem(", ".join(sorted(arguments)) or None, "rejected_value",
                    shorten(str(verdict)) if verdict is not False else "rejected by the node")
    return problems


def _check_link(name, value, kind, prompt, classes, problem) -> None:
    if not is_link(value):
        problem(name, "bad_link", f"a link must be [node id, output index], got {brief(value)}")
        return
    origin_id, slot = str(value[0]), value[1]
    if origin_id not in prompt:
        problem(name, "bad_link", f"linked to node {origin_id}, which does not exist")
        return
    origin = classes.get(prompt[origin_id].get("class_type"))
    if origin is None:
        return  # reported as an unknown class
    returns = origin.RETURN_TYPES
    if not 0 <= slot < len(returns):
        problem(name, "bad_link", f"linked to output {slot} of node {origin_id}, which has {len(returns)} outputs")
    elif not types_match(returns[slot], kind):
        problem(name, "type_mismatch", f"node {origin_id} output {slot} gives {_type_name(returns[slot])} "
                                       f"but this input takes {_type_name(kind)}")


def _type_name(kind) -> str:
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def _cycles(prompt: dict, needed: set[str]) -> list[Problem]:
    """One problem per node on a dependency cycle."""
    state, on_cycle = {}, set()

    def visit(node_id, path):
        state[node_id] = "open"
        path.append(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            origin = str(value[0]) if is_link(value) else None
            if origin not in needed:
                continue
            if state.get(origin) == "open":
                on_cycle.update(path[path.index(origin):])
            elif origin not in state:
                visit(origin, path)
        path.pop()
        state[node_id] = "done"

    for node_id in sorted(needed, key=_id_order):
        if node_id not in state:
            visit(node_id, [])
    return [Problem(n, prompt[n].get("class_type", "?"), None, "cycle", "the node depends on itself through a cycle of links")
            for n in sorted(on_cycle, key=_id_order)]
