"""Shape returned resources for the ``_summary`` and ``_elements`` parameters (FHIR R4 search.html).

Decisions where the specification leaves room:

* ``_summary=true`` keeps ``resourceType``, ``id``, ``meta`` and every element whose base definition
  has ``isSummary``. Inside BackboneElements (including ones reached through ``contentReference``) only
  the summary children are kept, recursively. Elements of a datatype (CodeableConcept, HumanName, ...)
  are kept whole: in R4 every datatype child apart from ``id``/``extension`` (and a few ``data``
  elements) is marked summary, and the spec treats datatypes as atomic for summaries. ``contained`` is
  not a summary element, so it is dropped. ``Bundle.entry`` is kept whole (entries are not shaped).
* ``_summary=text`` keeps ``resourceType``, ``id``, ``meta``, ``text`` and the top-level mandatory
  elements (``min >= 1``); ``_summary=data`` drops only the top-level ``text``.
* ``_summary=count`` is not a shaping mode: the caller answers with a count only, and :func:`shape`
  raises ``ValueError`` if asked for it. ``_summary=false`` (or none) returns the resource unchanged.
* ``_elements`` keeps the listed top-level elements plus ``resourceType``, ``id``, ``meta`` and the
  top-level mandatory elements; a choice name (``value``) keeps its typed form (``valueQuantity``).
  Names the type does not define are ignored. When both parameters are given, ``_elements`` wins and
  ``_summary`` is ignored (the spec leaves the combination undefined).
* A primitive's extension sibling (``_birthDate``) is kept exactly when its element is kept.
* Every subsetting mode (``true``, ``text``, ``data``, ``_elements``) adds the SUBSETTED tag to
  ``meta.tag`` (once), even when nothing happened to be removed, so the result is never mistaken for a
  complete resource.

The input is never mutated. The result is a new dict, but unmodified values (datatypes, contained
resources, ``decimal.Decimal`` numbers, ...) are shared with the input, not copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from conformance.definitions import element_definitions
from fhirserver.errors import BadRequest

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}

SUMMARY_VALUES = ("true", "text", "data", "count", "false")
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})
_BUNDLE_WHOLE = frozenset({"entry"})  # Bundle entries are kept as they are, never shaped
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")

Resource = dict[str, Any]


def parse_summary(value: str | None) -> str | None:
    """Validate a ``_summary`` value; ``None`` (or blank) means not given.

    Raises ``BadRequest`` for anything but ``true``, ``text``, ``data``, ``count`` or ``false``.
    """
    if value is None or not value.strip():
        return None
    mode = value.strip()
    if mode not in SUMMARY_VALUES:
        raise BadRequest(f"Invalid value {value!r} for _summary: expected one of {', '.join(SUMMARY_VALUES)}")
    return mode


def parse_elements(value: str | None) -> list[str] | None:
    """Split a ``_elements`` value into distinct top-level element names; ``None`` (or blank) means not given.

    Empty items are skipped; a name that is not an identifier raises ``BadRequest``.
    """
    if value is None:
        return None
    names: list[str] = []
    for item in value.split(","):
        name = item.strip()
        if not name:
            continue
        if not _ELEMENT_NAME.fullmatch(name):
            raise BadRequest(f"Invalid element name {name!r} in _elements: expected top-level element names")
        if name not in names:
            names.append(name)
    return names or None


@dataclass(frozen=True)
class _TypeIndex:
    """Element definitions of one type, addressable by the JSON property names of an instance."""

    defs: dict[str, dict]
    names: dict[str, dict[str, str]]  # parent relative path ("" = top level) -> JSON name -> definition path

    def resolve(self, parent: str, key: str) -> str | None:
        """Definition path of JSON property ``key`` (``_x`` siblings resolve like ``x``) under ``parent``."""
        return self.names.get(parent, {}).get(key.removeprefix("_"))

    def children_path(self, path: str) -> str | None:
        """Path whose children define the content of BackboneElement ``path``; ``None`` if not a backbone."""
        definition = self.defs[path]
        if "BackboneElement" not in definition.get("types", []):
            return None
        target = definition.get("ref", path)
        return target if target in self.names else None


@cache
def _type_index(type_name: str) -> _TypeIndex:
    """Build (once per type) the name lookup for ``type_name``; empty for unknown types."""
    defs = element_definitions(type_name)
    names: dict[str, dict[str, str]] = {}
    for path, definition in defs.items():
        parent, _, last = path.rpartition(".")
        scope = names.setdefault(parent, {})
        if last.endswith("[x]"):
            base = last[:-3]
            for code in definition.get("types", []):
                scope[base + code[:1].upper() + code[1:]] = path
        else:
            scope[last] = path
    return _TypeIndex(defs, names)


def _with_subsetted(meta: Any) -> Resource:
    """A copy of ``meta`` whose ``tag`` list contains SUBSETTED exactly once."""
    new_meta: Resource = dict(meta) if isinstance(meta, dict) else {}
    tags = list(new_meta.get("tag") or [])
    if not any(
        isinstance(t, dict) and t.get("system") == SUBSETTED["system"] and t.get("code") == SUBSETTED["code"]
        for t in tags
    ):
        tags.append(dict(SUBSETTED))
    new_meta["tag"] = tags
    return new_meta


def _summary_value(value: Any, index: _TypeIndex, parent: str) -> Any:
    """Apply the summary filter to a backbone value (one object or a list of them)."""
    if isinstance(value, list):
        return [_summary_object(item, index, parent) if isinstance(item, dict) else item for item in value]
    if isinstance(value, dict):
        return _summary_object(value, index, parent)
    return value


def _summary_object(obj: Resource, index: _TypeIndex, parent: str, whole: frozenset[str] = frozenset()) -> Resource:
    """Keep the summary properties of ``obj`` whose definitions live under ``parent``.

    Backbone properties are filtered recursively, except those named in ``whole``.
    """
    out: Resource = {}
    for key, value in obj.items():
        if parent == "" and key.removeprefix("_") in ALWAYS_KEPT:
            out[key] = value
            continue
        path = index.resolve(parent, key)
        if path is None or not index.defs[path].get("summary"):
            continue
        children = None if key.startswith("_") or key in whole else index.children_path(path)
        out[key] = _summary_value(value, index, children) if children is not None else value
    return out


def _is_mandatory(index: _TypeIndex, key: str) -> bool:
    """Whether top-level property ``key`` is defined with ``min >= 1``."""
    path = index.resolve("", key)
    return path is not None and index.defs[path].get("min", 0) >= 1


def _listed(index: _TypeIndex, key: str, wanted: set[str]) -> bool:
    """Whether top-level property ``key`` was asked for by name (choice names match their typed forms)."""
    name = key.removeprefix("_")
    if name in wanted:
        return True
    path = index.resolve("", key)
    return path is not None and path.removesuffix("[x]") in wanted


def shape(resource: Resource, summary: str | None = None, elements: list[str] | None = None) -> Resource:
    """Return ``resource`` shaped for ``_summary``/``_elements`` (see the module docstring for the rules).

    ``summary`` is a value from :func:`parse_summary`, ``elements`` a list from :func:`parse_elements`
    (an empty list counts as not given). Without a subsetting mode the input itself is returned.
    Raises ``ValueError`` for ``summary="count"`` (callers handle counts) and unknown summary values.
    """
    if summary == "count":
        raise ValueError("_summary=count is not a shaping mode; the caller returns the count only")
    if summary not in (None, *SUMMARY_VALUES):
        raise ValueError(f"unknown _summary mode {summary!r}")
    index = _type_index(str(resource.get("resourceType", "")))
    if elements:
        wanted = set(elements)
        out = {
            k: v for k, v in resource.items()
            if k.removeprefix("_") in ALWAYS_KEPT or _listed(index, k, wanted) or _is_mandatory(index, k)
        }
    elif summary == "true":
        whole = _BUNDLE_WHOLE if resource.get("resourceType") == "Bundle" else frozenset()
        out = _summary_object(resource, index, "", whole)
    elif summary == "text":
        out = {
            k: v for k, v in resource.items()
            if k.removeprefix("_") in ALWAYS_KEPT or k == "text" or _is_mandatory(index, k)
        }
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        return resource
    out["meta"] = _with_subsetted(resource.get("meta"))
    return out
