"""Search parameter registry: the official R4 SearchParameters of each resource type, with compiled evaluators.

An official expression often covers many types (``clinical-date`` is a 17-branch union). For one resource type only
the union branches that start with that type (``Observation.code``, ``(Observation.effective as dateTime)``), with
``Resource``/``DomainResource``, or with a relative path (``name | alias``) are kept and compiled.

Evaluators return *typed items*: ``(value, type)`` pairs where ``value`` is the JSON value (dict, str, number, bool)
and ``type`` is a FHIR type name (``CodeableConcept``, ``dateTime``), a resource type name, or a backbone element path
(``Observation.component``). Extraction (``extract.py``) turns them into index values by parameter type.

Most expressions are plain paths; those run on a small path walker driven by the element definitions (choice types
``value`` -> ``valueQuantity``/``valueString``/...). The walker understands dotted names, ``as T``/``as(T)``/
``ofType(T)``, ``where(resolve() is T)``, ``where(field = 'literal')``, ``extension('url')``, ``[n]``, ``first()``
and ``%resource``; anything else is evaluated by fhirpathpy (compiled once, ``models["r4"]``, with a ``resolve()``
stub that only knows the target type written in the reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from conformance.definitions import element_definitions, search_parameters, search_parameters_for

Item = tuple[Any, str | None]
# evaluate(node, node_type, resource) -> typed items; top-level parameters get (resource, resource_type, resource).
Evaluator = Callable[[Any, str | None, dict], list[Item]]

# Parameters that are answered without an index (or not at all).
NOT_INDEXED = frozenset({"_text", "_content", "_query", "_filter", "near", "_has", "_list"})

# Where a literal reference names its target type: "Patient/1", "Patient/1/_history/2", "http://x/fhir/Patient/1".
_REFERENCE_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


class Unsupported(Exception):
    """The path walker does not understand an expression; fhirpathpy evaluates it instead."""


@dataclass(frozen=True, slots=True)
class Component:
    """One component of a composite parameter, resolved to its own definition."""

    code: str  # code of the component's SearchParameter, e.g. ``value-quantity``
    type: str
    definition: str  # canonical URL of the component's SearchParameter
    expression: str  # relative to each element the composite's expression selects
    evaluate: Evaluator
    fast: bool


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter as it applies to one resource type."""

    code: str
    type: str  # number, date, string, token, reference, composite, quantity, uri
    url: str
    expression: str  # the branches kept for this type, joined by " | "
    evaluate: Evaluator
    targets: tuple[str, ...]
    components: tuple[Component, ...]
    fast: bool  # every branch runs on the path walker


# ---------------------------------------------------------------------------
# Registry


@cache
def params_for(resource_type: str) -> dict[str, SearchParam]:
    """Code -> indexed SearchParam for ``resource_type`` (special and expression-less parameters left out).

    Cached per type: the dict is shared, treat it as read-only. An unknown type gives ``{}``.
    """
    out: dict[str, SearchParam] = {}
    for code, definition in sorted(search_parameters_for(resource_type).items()):
        param = _build(resource_type, code, definition)
        if param is not None:
            out[code] = param
    return out


def indexed_params(resource_type: str) -> tuple[SearchParam, ...]:
    """The parameters extracted at write time for ``resource_type``, sorted by code."""
    return _indexed(resource_type)


@cache
def _indexed(resource_type: str) -> tuple[SearchParam, ...]:
    """Cached tuple behind ``indexed_params``."""
    return tuple(params_for(resource_type).values())


def _build(resource_type: str, code: str, definition: dict) -> SearchParam | None:
    """Compile one official SearchParameter for one type; ``None`` when it is not indexed there."""
    ptype = definition["type"]
    expression = definition.get("expression")
    if ptype == "special" or code in NOT_INDEXED or not expression:
        return None
    # fhirpathpy lacks hasExtension(url); FHIRPath defines it as extension.where(url = …).exists()
    expression = _HAS_EXTENSION.sub(r"extension.where(url = \1).exists()", expression)
    branches = branches_for(expression, resource_type)
    if not branches:
        return None
    evaluate, fast = compile_union(branches)
    components: tuple[Component, ...] = ()
    if ptype == "composite":
        built = [_component(c) for c in definition.get("component", [])]
        if not built or any(c is None for c in built):
            return None
        components = tuple(c for c in built if c is not None)
        fast = fast and all(c.fast for c in components)
    return SearchParam(
        code=code,
        type=ptype,
        url=definition.get("url", ""),
        expression=" | ".join(branches),
        evaluate=evaluate,
        targets=tuple(definition.get("target", ())),
        components=components,
        fast=fast,
    )


_HAS_EXTENSION = re.compile(r"hasExtension\(('[^']*')\)")


@cache
def _by_url() -> dict[str, dict]:
    """Canonical URL -> SearchParameter, for composite component definitions."""
    return {p["url"]: p for p in search_parameters() if "url" in p}


def _component(component: dict) -> Component | None:
    """Resolve ``component[].definition`` and compile ``component[].expression``."""
    definition = _by_url().get(component.get("definition", "").split("|", 1)[0])
    expression = component.get("expression")
    if definition is None or not expression:
        return None
    evaluate, fast = compile_union(split_union(expression))
    return Component(
        code=definition["code"],
        type=definition["type"],
        definition=definition["url"],
        expression=expression,
        evaluate=evaluate,
        fast=fast,
    )


# ---------------------------------------------------------------------------
# Splitting official expressions


def split_union(expression: str) -> list[str]:
    """Split at top-level ``|`` (not inside parentheses, brackets or string literals)."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    n = len(expression)
    while i < n:
        ch = expression[i]
        if ch == "'":
            i += 1
            while i < n and expression[i] != "'":
                i += 2 if expression[i] == "\\" else 1
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_LEADING_NAME = re.compile(r"\(*\s*(%?[A-Za-z_][A-Za-z0-9_]*)")


def branches_for(expression: str, resource_type: str) -> list[str]:
    """The union branches of ``expression`` that apply to ``resource_type``."""
    kept = []
    for branch in split_union(expression):
        m = _LEADING_NAME.match(branch)
        if not m:
            continue
        name = m.group(1)
        if name in (resource_type, "Resource", "DomainResource", "%resource") or name[0].islower():
            kept.append(branch)
    return kept


def compile_union(branches: list[str]) -> tuple[Evaluator, bool]:
    """One evaluator for the union of ``branches``, and whether all of them run on the walker."""
    compiled = [_compile_branch(b) for b in branches]
    fast = all(f for _, f in compiled)
    fns = [fn for fn, _ in compiled]
    if len(fns) == 1:
        return fns[0], fast

    def evaluate_all(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        out: list[Item] = []
        for fn in fns:
            out.extend(fn(node, node_type, resource))
        return out

    return evaluate_all, fast


@cache
def _compile_branch(branch: str) -> tuple[Evaluator, bool]:
    """Walker for a simple branch, compiled fhirpathpy otherwise."""
    try:
        return compile_walker(branch), True
    except Unsupported:
        return compile_fhirpath(branch), False


# ---------------------------------------------------------------------------
# Types of elements


def reference_type(reference: Any) -> str | None:
    """The target type a Reference (or reference string) names, ``None`` when it cannot be told.

    Contained (``#id``) and ``urn:uuid:`` references do not name a type unless ``Reference.type`` is given.
    """
    if isinstance(reference, dict):
        ref = reference.get("reference")
        if isinstance(ref, str) and ref.startswith("#"):
            return None
        m = _REFERENCE_TYPE.search(ref) if isinstance(ref, str) else None
        if m:
            return m.group(1)
        declared = reference.get("type")
        if isinstance(declared, str) and ref is not None:
            return declared.rsplit("/", 1)[-1]
        return None
    if isinstance(reference, str):
        m = _REFERENCE_TYPE.search(reference)
        return m.group(1) if m else None
    return None


@cache
def child_slots(type_name: str, name: str, only: frozenset[str] | None = None) -> tuple[tuple[str, str], ...]:
    """JSON keys and types of child element ``name`` of ``type_name``; choice elements give one per type.

    ``type_name`` is a resource or datatype name or a backbone path (``Observation.component``). ``only`` keeps the
    types whose normalized name it holds (``as``/``ofType``).
    """
    owner, _, sub = type_name.partition(".")
    defs = element_definitions(owner)
    prefix = sub + "." if sub else ""
    entry = defs.get(prefix + name)
    choice = False
    if entry is None:
        entry = defs.get(prefix + name + "[x]")
        choice = True
    if entry is None:
        return ()
    slots = []
    for code in entry["types"]:
        if code in ("BackboneElement", "Element"):
            child_type = owner + "." + (entry.get("ref") or prefix + name)
        else:
            child_type = code
        if only is not None and code.lower() not in only:
            continue
        key = name + code[0].upper() + code[1:] if choice else name
        slots.append((key, child_type))
    return tuple(slots)


# ---------------------------------------------------------------------------
# The path walker

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<var>%[A-Za-z]+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[().\[\]=|]))"
)
_UNESCAPE = re.compile(r"\\(.)")

Step = tuple[Any, ...]


def _tokenize(expression: str) -> list[tuple[str, str]]:
    """Tokens of the walker's subset of FHIRPath; raises Unsupported on anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expression.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise Unsupported(expression)
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = _UNESCAPE.sub(r"\1", value[1:-1])
        tokens.append((kind, value))
    return tokens


class _Parser:
    """Recursive descent over the walker's subset, producing a flat list of steps."""

    def __init__(self, expression: str) -> None:
        """Tokenize ``expression``."""
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.pos = 0

    def fail(self) -> Unsupported:
        """The error for anything outside the subset."""
        return Unsupported(self.expression)

    def peek(self, offset: int = 0) -> tuple[str, str]:
        """The token ``offset`` ahead, or an end marker."""
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        """Consume a token of ``kind`` (and ``value``)."""
        tok = self.peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise self.fail()
        self.pos += 1
        return tok[1]

    def parse(self) -> list[Step]:
        """The whole expression as steps."""
        steps: list[Step] = []
        self.expr(steps, first=True)
        if self.peek()[0] != "end":
            raise self.fail()
        return steps

    def type_name(self) -> str:
        """``Quantity``, ``FHIR.Quantity`` or ``System.String`` -> the last name."""
        name = self.take("id")
        while self.peek() == ("op", ".") and self.peek(1)[0] == "id":
            self.pos += 1
            name = self.take("id")
        return name

    def expr(self, steps: list[Step], first: bool) -> None:
        """term ('as' Type)*"""
        self.term(steps, first)
        while self.peek() == ("id", "as"):
            self.pos += 1
            steps.append(("as", self.type_name()))

    def term(self, steps: list[Step], first: bool) -> None:
        """A path, a parenthesized expression or ``%resource``, followed by invocations."""
        kind, value = self.peek()
        if (kind, value) == ("op", "("):
            self.pos += 1
            self.expr(steps, first)
            self.take("op", ")")
        elif kind == "var" and value == "%resource":
            self.pos += 1
            steps.append(("resource",))
        elif kind == "id" and self.peek(1) != ("op", "("):
            self.pos += 1
            steps.append(("type", value) if first and value[0].isupper() else ("field", value))
        else:
            raise self.fail()
        self.postfix(steps)

    def postfix(self, steps: list[Step]) -> None:
        """``.name``, ``.fn(...)`` and ``[n]`` after a term."""
        while True:
            tok = self.peek()
            if tok == ("op", "["):
                self.pos += 1
                steps.append(("index", int(self.take("num"))))
                self.take("op", "]")
            elif tok == ("op", "."):
                self.pos += 1
                name = self.take("id")
                if self.peek() != ("op", "("):
                    steps.append(("field", name))
                    continue
                self.pos += 1
                if name in ("as", "ofType"):
                    steps.append(("as", self.type_name()))
                elif name == "where":
                    steps.append(self.where())
                elif name == "extension":
                    steps.append(("extension", self.take("str")))
                elif name == "first":
                    steps.append(("index", 0))
                else:
                    raise self.fail()
                self.take("op", ")")
            else:
                return

    def where(self) -> Step:
        """``resolve() is T`` or ``field = 'literal'`` (the closing parenthesis is left to the caller)."""
        name = self.take("id")
        if name == "resolve":
            self.take("op", "(")
            self.take("op", ")")
            self.take("id", "is")
            return ("resolve_is", self.type_name())
        self.take("op", "=")
        return ("where_eq", name, self.take("str"))


def _step_type(name: str) -> Callable[[list[Item], dict], list[Item]]:
    """A leading type name: keep the context when it is of that type."""
    any_resource = name in ("Resource", "DomainResource")

    def step(items: list[Item], resource: dict) -> list[Item]:
        if any_resource:
            return items
        return [(v, t) for v, t in items if t == name or (isinstance(v, dict) and v.get("resourceType") == name)]

    return step


def _step_field(name: str, only: frozenset[str] | None) -> Callable[[list[Item], dict], list[Item]]:
    """Child element ``name`` (all choice types, or those in ``only``), lists flattened."""

    def step(items: list[Item], resource: dict) -> list[Item]:
        out: list[Item] = []
        for value, typ in items:
            if not isinstance(value, dict):
                continue
            if typ is None or typ == "Resource":
                typ = value.get("resourceType")
            if typ is None:
                slots: tuple[tuple[str, str | None], ...] = ((name, None),)
            else:
                slots = child_slots(typ, name, only)
            for key, child_type in slots:
                child = value.get(key)
                if child is None:
                    continue
                if isinstance(child, list):
                    out.extend((c, child_type) for c in child if c is not None)
                else:
                    out.append((child, child_type))
        return out

    return step


def _step_as(type_name: str) -> Callable[[list[Item], dict], list[Item]]:
    """Keep items of one type."""
    want = type_name.lower()

    def step(items: list[Item], resource: dict) -> list[Item]:
        return [(v, t) for v, t in items if t is not None and t.lower() == want]

    return step


def _step_resolve_is(type_name: str) -> Callable[[list[Item], dict], list[Item]]:
    """``where(resolve() is T)``: references whose literal target type is T."""

    def step(items: list[Item], resource: dict) -> list[Item]:
        return [(v, t) for v, t in items if reference_type(v) == type_name]

    return step


def _step_where_eq(field: str, literal: str) -> Callable[[list[Item], dict], list[Item]]:
    """``where(field = 'literal')`` on a primitive child."""

    def step(items: list[Item], resource: dict) -> list[Item]:
        return [(v, t) for v, t in items if isinstance(v, dict) and v.get(field) == literal]

    return step


def _step_extension(url: str) -> Callable[[list[Item], dict], list[Item]]:
    """``extension('url')``."""

    def step(items: list[Item], resource: dict) -> list[Item]:
        out: list[Item] = []
        for value, _ in items:
            if isinstance(value, dict):
                out.extend(
                    (e, "Extension") for e in value.get("extension", ()) if isinstance(e, dict) and e.get("url") == url
                )
        return out

    return step


def _step_index(n: int) -> Callable[[list[Item], dict], list[Item]]:
    """``[n]`` / ``first()``."""

    def step(items: list[Item], resource: dict) -> list[Item]:
        return items[n : n + 1]

    return step


def _step_resource(items: list[Item], resource: dict) -> list[Item]:
    """``%resource``: the resource being indexed."""
    return [(resource, resource.get("resourceType"))]


def compile_walker(expression: str) -> Evaluator:
    """Compile a simple path expression to the walker; raises Unsupported otherwise."""
    steps = _Parser(expression).parse()
    fns: list[Callable[[list[Item], dict], list[Item]]] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        kind = step[0]
        if kind == "field":
            only = None
            # `x.as(T)` right after a field: look up only the T slot of a choice element.
            while i + 1 < len(steps) and steps[i + 1][0] == "as":
                only = frozenset({steps[i + 1][1].lower()}) if only is None else only & {steps[i + 1][1].lower()}
                i += 1
            fns.append(_step_field(step[1], only))
        elif kind == "type":
            fns.append(_step_type(step[1]))
        elif kind == "as":
            fns.append(_step_as(step[1]))
        elif kind == "resolve_is":
            fns.append(_step_resolve_is(step[1]))
        elif kind == "where_eq":
            fns.append(_step_where_eq(step[1], step[2]))
        elif kind == "extension":
            fns.append(_step_extension(step[1]))
        elif kind == "index":
            fns.append(_step_index(step[1]))
        elif kind == "resource":
            fns.append(_step_resource)
        else:  # pragma: no cover - the parser makes no other steps
            raise Unsupported(expression)
        i += 1
    pipeline = tuple(fns)

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        items: list[Item] = [(node, node_type)]
        for fn in pipeline:
            items = fn(items, resource)
            if not items:
                break
        return items

    return evaluate


# ---------------------------------------------------------------------------
# fhirpathpy for the rest


def resolve_stub(inputs: list) -> list:
    """``resolve()`` stub: a type-only node for each reference whose target type can be told."""
    out = []
    for node in inputs:
        data = node.data if isinstance(node, ResourceNode) else node
        target = reference_type(data)
        if target:
            out.append(ResourceNode.create_node({"resourceType": target}))
    return out


_OPTIONS = {"userInvocationTable": {"resolve": {"fn": resolve_stub, "arity": {0: []}}}, "returnRawData": True}


def _typed(node: Any) -> Item:
    """A fhirpathpy raw result as a typed item."""
    if isinstance(node, ResourceNode):
        data = node.data
        path = node.path
        if isinstance(data, dict) and "resourceType" in data:
            return data, data["resourceType"]
        return data, path if isinstance(path, str) else None
    if isinstance(node, bool):
        return node, "boolean"
    if isinstance(node, int):
        return node, "integer"
    if isinstance(node, float | Decimal):
        return node, "decimal"
    if isinstance(node, str):
        return node, "string"
    return str(node), "dateTime"


def compile_fhirpath(expression: str) -> Evaluator:
    """Compile ``expression`` with fhirpathpy (R4 model, ``resolve()`` stub)."""
    fn = fhirpathpy.compile(expression, models["r4"], _OPTIONS)

    def evaluate(node: Any, node_type: str | None, resource: dict) -> list[Item]:
        base = node if node is resource or node_type is None else ResourceNode.create_node(node, node_type)
        return [_typed(x) for x in fn(base, {"resource": resource})]

    return evaluate
