"""Run-time access to the official FHIR R4 definitions extracted into ``conformance/r4``.

Files are parsed once and cached. Returned containers are fresh shallow copies, but the
resource dicts inside are shared: treat them as read-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "r4"

Resource = dict[str, Any]
Codes = frozenset[tuple[str, str]]

# SearchParameters in the core package that are spec examples, not real parameters.
_EXAMPLE_PARAM_IDS = re.compile(r"^example(-.*)?$")
# Concept properties that express a hierarchy in addition to nested ``concept`` lists.
_PARENT_PROPS = ("parent", "subsumedBy")
_CHILD_PROPS = ("child",)


class _NotEnumerable(Exception):
    """Raised internally when a value set cannot be fully enumerated."""


@cache
def _load(name: str) -> Any:
    """Parse one JSON file of the extract."""
    with (DATA_DIR / name).open(encoding="utf-8") as fh:
        return json.load(fh)


def _entries(name: str) -> list[Resource]:
    """Resources of a Bundle file."""
    return [entry["resource"] for entry in _load(name).get("entry", [])]


def _unversioned(url: str) -> str:
    """Drop a ``|version`` suffix from a canonical URL."""
    return url.split("|", 1)[0]


# ---------------------------------------------------------------------------
# Search parameters


def search_parameters() -> list[Resource]:
    """All SearchParameter resources of the core package, sorted by id."""
    return list(_entries("search-parameters.json"))


@cache
def _search_index() -> dict[str, dict[str, Resource]]:
    """Map base type -> code -> SearchParameter, non-experimental ones winning ties."""
    index: dict[str, dict[str, Resource]] = {}
    params = sorted(
        (p for p in _entries("search-parameters.json") if not _EXAMPLE_PARAM_IDS.match(p["id"])),
        key=lambda p: (bool(p.get("experimental")), p["id"]),
    )
    for param in params:
        for base in param.get("base", []):
            index.setdefault(base, {}).setdefault(param["code"], param)
    return index


def search_parameters_for(resource_type: str) -> dict[str, Resource]:
    """Code -> SearchParameter usable on ``resource_type``, incl. Resource/DomainResource ones.

    ``Resource`` gives only the parameters based on Resource; an unknown type gives ``{}``.
    The spec's example SearchParameters (ids ``example``, ``example-*``) are left out.
    """
    index = _search_index()
    if resource_type == "Resource":
        bases = ["Resource"]
    elif resource_type == "DomainResource":
        bases = ["Resource", "DomainResource"]
    elif resource_type in _resource_type_set():
        bases = ["Resource", "DomainResource", resource_type]
    else:
        return {}
    out: dict[str, Resource] = {}
    for base in bases:
        out.update(index.get(base, {}))
    return out


# ---------------------------------------------------------------------------
# Compartments


@cache
def _compartments() -> dict[str, Resource]:
    """CompartmentDefinitions keyed by their ``code`` (e.g. ``Patient``)."""
    return {c["code"]: c for c in _entries("compartments.json")}


def compartment_definition(code: str) -> Resource:
    """The CompartmentDefinition for ``code`` (``Patient``; the id ``patient`` also works)."""
    comps = _compartments()
    if code in comps:
        return comps[code]
    for comp in comps.values():
        if comp["id"] == code:
            return comp
    raise KeyError(f"unknown compartment {code!r}")


@cache
def _compartment_params(compartment: str) -> dict[str, tuple[str, ...]]:
    """Resource type -> params linking it to ``compartment``."""
    definition = compartment_definition(compartment)
    return {r["code"]: tuple(r.get("param", [])) for r in definition.get("resource", [])}


def compartment_params(compartment: str, resource_type: str) -> list[str]:
    """Search params placing ``resource_type`` in ``compartment``; empty when it is not a member.

    Raises ``KeyError`` for an unknown compartment.
    """
    return list(_compartment_params(compartment).get(resource_type, ()))


# ---------------------------------------------------------------------------
# Types and bindings


@cache
def _resource_type_set() -> frozenset[str]:
    """Concrete resource type names as a set."""
    return frozenset(_load("resource-types.json")["resource"])


def resource_types() -> list[str]:
    """Sorted names of the concrete (instantiable) resource types."""
    return list(_load("resource-types.json")["resource"])


def required_bindings(type_name: str) -> dict[str, str]:
    """Element path -> ValueSet URL of every required binding of a resource or datatype."""
    return dict(_load("required-bindings.json").get(type_name, {}))


@cache
def element_definitions(type_name: str) -> dict[str, dict]:
    """Relative element path -> ``summary``/``min``/``max``/``types`` (and ``ref``) of a type.

    Covers concrete resource types and complex datatypes (``{}`` for anything else); paths look
    like ``code``, ``component.code`` or ``value[x]``. Cached: the result is shared, treat it as read-only.
    """
    return dict(_load("elements.json").get(type_name, {}))


# ---------------------------------------------------------------------------
# Terminology


@cache
def _terminology() -> tuple[dict[str, Resource], dict[str, Resource]]:
    """ValueSets and CodeSystems keyed by canonical URL."""
    valuesets: dict[str, Resource] = {}
    codesystems: dict[str, Resource] = {}
    for resource in _entries("terminology.json"):
        if resource["resourceType"] == "ValueSet":
            valuesets[resource["url"]] = resource
        elif resource["resourceType"] == "CodeSystem":
            codesystems[resource["url"]] = resource
    return valuesets, codesystems


class _CodeSystemIndex:
    """Codes, hierarchy and property values of one complete CodeSystem."""

    def __init__(self, resource: Resource) -> None:
        """Index the (possibly nested) concepts of ``resource``."""
        self.codes: list[str] = []
        self.children: dict[str, set[str]] = {}
        self.properties: dict[str, dict[str, list[str]]] = {}
        self._walk(resource.get("concept", []), None)
        self._link_property_hierarchy()

    def _walk(self, concepts: list[Resource], parent: str | None) -> None:
        """Record concepts, their nesting and their property values."""
        for concept in concepts:
            code = concept["code"]
            self.codes.append(code)
            self.children.setdefault(code, set())
            if parent is not None:
                self.children[parent].add(code)
            props = self.properties.setdefault(code, {})
            for prop in concept.get("property", []):
                props.setdefault(prop["code"], []).append(_property_value(prop))
            self._walk(concept.get("concept", []), code)

    def _link_property_hierarchy(self) -> None:
        """Add parent/child links expressed through concept properties."""
        for code, props in self.properties.items():
            for name in _PARENT_PROPS:
                for parent in props.get(name, []):
                    self.children.setdefault(parent, set()).add(code)
            for name in _CHILD_PROPS:
                for child in props.get(name, []):
                    self.children[code].add(child)

    def descendants(self, code: str) -> set[str]:
        """All codes below ``code`` (not including it)."""
        found: set[str] = set()
        todo = list(self.children.get(code, ()))
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo.extend(self.children.get(current, ()))
        return found

    def ancestors(self, code: str) -> set[str]:
        """All codes above ``code`` (not including it)."""
        return {c for c in self.codes if code in self.descendants(c)}

    def apply_filter(self, flt: Resource) -> set[str]:
        """Codes selected by one ``compose.include.filter`` entry."""
        prop, op, value = flt.get("property"), flt.get("op"), str(flt.get("value", ""))
        every = set(self.codes)
        if prop in ("concept", "code"):
            if op == "is-a":
                return ({value} | self.descendants(value)) & every if value in every else set()
            if op == "descendent-of":
                return self.descendants(value) & every
            if op == "is-not-a":
                return every - {value} - self.descendants(value)
            if op == "generalizes":
                return ({value} | self.ancestors(value)) & every if value in every else set()
            if op == "=":
                return {value} & every
            if op == "in":
                return {v.strip() for v in value.split(",")} & every
            if op == "not-in":
                return every - {v.strip() for v in value.split(",")}
            if op == "regex":
                pattern = re.compile(value)
                return {c for c in every if pattern.fullmatch(c)}
            raise _NotEnumerable(f"filter op {op}")
        if op == "=":
            return {c for c in every if value in self.properties.get(c, {}).get(prop, [])}
        if op == "exists":
            want = value.lower() == "true"
            return {c for c in every if (prop in self.properties.get(c, {})) == want}
        raise _NotEnumerable(f"filter {prop} {op}")


def _property_value(prop: Resource) -> str:
    """A concept property value as a string (booleans as ``true``/``false``)."""
    for key, val in prop.items():
        if key.startswith("value"):
            return str(val).lower() if isinstance(val, bool) else str(val)
    return ""


@cache
def _codesystem_index(system: str) -> _CodeSystemIndex:
    """Index of a complete CodeSystem held in the extract."""
    resource = _terminology()[1].get(system)
    if resource is None:
        raise _NotEnumerable(f"code system {system} not available")
    if resource.get("content") != "complete":
        raise _NotEnumerable(f"code system {system} content {resource.get('content')}")
    return _CodeSystemIndex(resource)


def _select(rule: Resource, stack: tuple[str, ...]) -> set[tuple[str, str]]:
    """Codes of one include/exclude rule (system part intersected with its value sets)."""
    selected: set[tuple[str, str]] | None = None
    system = rule.get("system")
    if system:
        if rule.get("concept"):
            codes = {c["code"] for c in rule["concept"]}
        else:
            index = _codesystem_index(system)
            codes = set(index.codes)
            for flt in rule.get("filter", []):
                codes &= index.apply_filter(flt)
        selected = {(system, code) for code in codes}
    for ref in rule.get("valueSet", []):
        other = set(_expand(_unversioned(ref), stack))
        selected = other if selected is None else selected & other
    return selected or set()


def _flatten_contains(contains: Iterable[Resource]) -> set[tuple[str, str]]:
    """(system, code) pairs from a (nested) ``expansion.contains`` list."""
    out: set[tuple[str, str]] = set()
    for item in contains:
        if item.get("system") and item.get("code"):
            out.add((item["system"], item["code"]))
        out |= _flatten_contains(item.get("contains", []))
    return out


def _expand(url: str, stack: tuple[str, ...] = ()) -> Codes:
    """Enumerate a value set, raising ``_NotEnumerable`` when that is impossible."""
    if url in stack:
        raise _NotEnumerable(f"circular reference to {url}")
    valueset = _terminology()[0].get(url)
    if valueset is None:
        raise _NotEnumerable(f"value set {url} not available")
    compose = valueset.get("compose")
    if compose is None:
        expansion = valueset.get("expansion")
        if expansion is None or "offset" in expansion:
            raise _NotEnumerable(f"value set {url} has no compose")
        return frozenset(_flatten_contains(expansion.get("contains", [])))
    inner = stack + (url,)
    codes: set[tuple[str, str]] = set()
    for rule in compose.get("include", []):
        codes |= _select(rule, inner)
    for rule in compose.get("exclude", []):
        codes -= _select(rule, inner)
    return frozenset(codes)


@cache
def _valueset_codes(url: str) -> Codes | None:
    """Cached expansion of an unversioned value set URL, ``None`` if not enumerable."""
    try:
        return _expand(url)
    except _NotEnumerable:
        return None


def valueset_codes(url: str) -> Codes | None:
    """(system, code) pairs of a value set, or ``None`` if it cannot be fully enumerated."""
    return _valueset_codes(_unversioned(url))


def valueset_contains(url: str, code: str, system: str | None = None) -> bool | None:
    """Whether ``code`` (in ``system`` if given) is in the value set; ``None`` = cannot tell."""
    codes = valueset_codes(url)
    if codes is None:
        return None
    if system is not None:
        return (system, code) in codes
    return any(c == code for _, c in codes)
