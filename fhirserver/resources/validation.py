"""Validation of FHIR R4 resources on write: structure, strict JSON types, required bindings, reference syntax.

Three passes over one resource, all reported as ``Issue`` objects (the caller answers 422 when there are any):

1. A walk of the raw JSON guided by the ``fhir.resources.R4B`` model fields. It reports what pydantic's lax mode
   lets through although FHIR JSON forbids it (``"true"`` for a boolean, ``"6.3"`` for a decimal, ``null``, ``[]``,
   ``{}``, ``""``, Python attribute names such as ``class_fhir``), checks every code against its required binding
   (the resource's own and those of the complex datatypes met on the way), checks the syntax of every
   ``Reference.reference``, and validates embedded resources (``contained``, ``Bundle.entry.resource``,
   ``Parameters.parameter.resource``, ...) on their own, with their own path.
2. ``model_validate`` of the R4B model on the same JSON with the embedded resources taken out: unknown and missing
   elements, formats of dates, ids, decimals, one value per choice element.
3. The two lists are merged; where the walk already reported an element, pydantic's message about it is dropped.

Requests that cannot name a resource at all (not an object, no or unknown ``resourceType``, a type or id that
contradicts the URL) raise ``BadRequest`` instead; the 18 R4 types that R4B lacks raise ``Unprocessable``.

The input is never modified. ``decimal.Decimal`` values (JSON parsed with ``parse_float=Decimal``) are accepted
wherever FHIR allows a decimal, and rejected where it wants an integer.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
import types
import typing
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase
from pydantic import ValidationError

from conformance.definitions import DATA_DIR, required_bindings, resource_types, valueset_codes
from fhirserver.errors import BadRequest, Issue, NotFound, Unprocessable

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Types this server accepts

ALL_TYPES: frozenset[str] = frozenset(resource_types())
"""The 146 concrete resource types of FHIR R4 4.0.1."""

# ``get_fhir_model_class(name)`` resolves ``fhirtypes.<name>Type`` and imports its module; the same lookup without
# the import (about 1 s for all modules) decides which types R4B can load. tests/test_validation.py checks that it
# agrees with get_fhir_model_class for every type.
R4_ONLY_TYPES: frozenset[str] = frozenset(t for t in ALL_TYPES if not hasattr(fhirtypes, f"{t}Type"))
"""R4 resource types that fhir.resources R4B does not model (MedicinalProduct*, Substance*, *EvidenceSynthesis)."""

SUPPORTED_TYPES: frozenset[str] = ALL_TYPES - R4_ONLY_TYPES
"""Resource types this server stores and validates."""

ID_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9\-\.]{1,64}\Z")
"""A FHIR ``id``: 1-64 of A-Z a-z 0-9 - . (anchored, so ``match`` and ``fullmatch`` agree)."""

with (DATA_DIR / "resource-types.json").open(encoding="utf-8") as _fh:
    COMPLEX_TYPES: frozenset[str] = frozenset(json.load(_fh)["complex-types"])
    """The 39 complex datatypes of R4 (Identifier, Quantity, Timing, ...): each starts its own binding paths."""

ID_RULES = ("any", "required", "absent-ok")

# Reference.reference forms (https://hl7.org/fhir/R4/references.html#literal)
_ID = r"[A-Za-z0-9\-\.]{1,64}"
_LITERAL_REF = re.compile(rf"([A-Za-z]+)/({_ID})(?:/_history/({_ID}))?")
_CONDITIONAL_REF = re.compile(r"([A-Za-z]+)\?(\S+)")
_ABSOLUTE_REF = re.compile(
    r"https?://[^\s/?#]+\S*"
    r"|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+"
)
_CONTAINED_REF = re.compile(rf"#(?:{_ID})?")

# Bundle types whose entries may use conditional references (resolved by the transaction/batch processor).
_CONDITIONAL_BUNDLES = frozenset({"transaction", "batch"})

# pydantic messages of fhir-core's one-of-many check (choice elements such as value[x]).
_CHOICE_FIELDS = re.compile(r"from this list \['([^']+)'")

# ---------------------------------------------------------------------------
# Field metadata of the R4B models, computed once per model

_BOOL, _INT, _DEC, _STR, _B64, _ELEM, _RES = range(7)
_INT_TYPES = frozenset({"integer", "integer64", "unsignedInt", "positiveInt"})


@dataclass(frozen=True, slots=True)
class _Field:
    """One JSON property of a model: its kind, whether it repeats, and its FHIR type."""

    name: str  # JSON name: "class", "_status"
    label: str  # name in expressions: "class", "status" (for "_status")
    kind: int
    is_list: bool
    type_name: str  # FHIR type: "code", "boolean", "Coding", "Resource", ...
    model: type[FHIRAbstractModel] | None
    choice: str | None  # "value" for valueQuantity etc.
    primitive_ext: bool  # a "_name" sibling holding a primitive's id/extensions
    walk_only: bool = False  # valid FHIR JSON that the R4B model lacks: checked by the walk, hidden from pydantic


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    """The JSON properties of one R4B model."""

    model: type[FHIRAbstractModel]
    name: str  # __resource_type__: "Observation", "ObservationComponent", "Identifier"
    fields: dict[str, _Field]  # by JSON name
    python: dict[str, _Field]  # by Python attribute name (pydantic's loc may use these)
    is_resource: bool
    is_root: bool  # a resource or complex datatype: binding paths start at its name


def unwrap_annotation(annotation: Any) -> tuple[Any, bool]:
    """Strip ``Optional``/``| None`` and ``List`` from an annotation: (inner type, is a list)."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, is_list
            annotation = args[0]
        elif origin is list:
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


def _classify(annotation: Any, metadata: list[Any]) -> tuple[int, str, type[FHIRAbstractModel] | None] | None:
    """Kind, FHIR type name and model class of an unwrapped annotation; ``None`` if it is not a FHIR type."""
    if annotation is bool:
        return _BOOL, "boolean", None
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        metadata = [*extra, *metadata]
    else:
        base = annotation
    for item in metadata:
        visit = getattr(item, "__visit_name__", None)
        if visit:
            if visit in _INT_TYPES:
                return _INT, visit, None
            if visit == "decimal":
                return _DEC, visit, None
            if visit == "base64Binary":
                return _B64, visit, None
            return _STR, visit, None
    if isinstance(base, type) and issubclass(base, FhirBase):
        model = base.get_model_klass()
        if model.has_resource_base():
            return _RES, model.__resource_type__, model
        return _ELEM, model.__resource_type__, model
    if base is uuid.UUID:  # pydantic's UUID4 annotation, without fhir-core's marker
        return _STR, "uuid", None
    return None


@cache
def _info(model: type[FHIRAbstractModel]) -> _ModelInfo:
    """Field metadata of an R4B model class."""
    fields: dict[str, _Field] = {}
    python: dict[str, _Field] = {}
    for attr, finfo in model.model_fields.items():
        if attr == "fhir_comments":  # a DSTU2 leftover: not part of R4 JSON
            continue
        inner, is_list = unwrap_annotation(finfo.annotation)
        found = _classify(inner, list(finfo.metadata))
        if found is None:
            continue
        kind, type_name, child = found
        name = finfo.alias or attr
        extra = finfo.json_schema_extra if isinstance(finfo.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        field = _Field(name=name, label=name[1:] if name.startswith("_") else name, kind=kind, is_list=is_list,
                       type_name=type_name, model=child, choice=choice if isinstance(choice, str) else None,
                       primitive_ext=attr.endswith("__ext"))
        fields[name] = field
        python[attr] = field
    _add_choice_extensions(fields)
    name = model.__resource_type__
    is_resource = model.has_resource_base()
    return _ModelInfo(model=model, name=name, fields=fields, python=python, is_resource=is_resource,
                      is_root=is_resource or name in COMPLEX_TYPES)


def _add_choice_extensions(fields: dict[str, _Field]) -> None:
    """Add the ``_valueString``-style siblings of primitive choice elements that a model lacks.

    FHIR JSON gives every primitive a ``_name`` sibling for its id and extensions (https://hl7.org/fhir/R4/json.html
    #primitive), and so ``Extension.valueString`` may carry ``_valueString`` (the R4 CodeSystems v2-* use it for
    translations). fhir.resources' Extension model has no such fields; they are walked like the other models'
    primitive extensions and left out of the copy given to pydantic.
    """
    element = fhirtypes.FHIRPrimitiveExtensionType.get_model_klass()
    for field in list(fields.values()):
        ext_name = f"_{field.name}"
        if field.choice and field.kind not in (_ELEM, _RES) and ext_name not in fields:
            fields[ext_name] = _Field(name=ext_name, label=field.name, kind=_ELEM, is_list=field.is_list,
                                      type_name=element.__resource_type__, model=element, choice=None,
                                      primitive_ext=True, walk_only=True)


def _starts_root(info: _ModelInfo, root: str) -> bool:
    """Whether an element of this model starts new binding paths (a datatype) instead of continuing ``root``'s.

    Backbone elements are named after their owner (ObservationComponent, TimingRepeat); anything else, including
    R4B-only datatypes such as CodeableReference, is a datatype of its own.
    """
    return info.is_root or not info.name.startswith(root) or info.name == root


def _camel(path: str) -> str:
    """fhir.resources' class name for a backbone element path: Observation.component -> ObservationComponent."""
    root, *parts = path.split(".")
    return root + "".join(p[:1].upper() + p[1:] for p in parts)


@cache
def _backbone_paths(root: str) -> dict[type[FHIRAbstractModel], str]:
    """Definition path of every backbone model under a root type.

    An element that reuses another's definition (``contentReference``: ``Questionnaire.item.item``,
    ``ValueSet.compose.exclude``) keeps the path where that definition lives, recognised by the class name.
    """
    try:
        root_model = get_fhir_model_class(root)
    except ValueError:
        return {}
    paths: dict[type[FHIRAbstractModel], str] = {root_model: root}
    exact: set[type[FHIRAbstractModel]] = {root_model}
    queue = [root_model]
    while queue:
        model = queue.pop(0)
        for field in _info(model).fields.values():
            if field.kind != _ELEM or field.model is None or field.model in exact:
                continue
            child = _info(field.model)
            if _starts_root(child, root):
                continue
            path = f"{paths[model]}.{field.choice + '[x]' if field.choice else field.name}"
            if _camel(path) == child.name:
                exact.add(field.model)
            elif field.model in paths:
                continue
            paths[field.model] = path
            queue.append(field.model)
    return paths


@cache
def _bindings(model: type[FHIRAbstractModel], defpath: str) -> dict[str, str]:
    """JSON name -> required ValueSet URL for the fields of ``model`` at definition path ``defpath``."""
    bound = required_bindings(defpath.split(".", 1)[0])
    if not bound:
        return {}
    out: dict[str, str] = {}
    for field in _info(model).fields.values():
        if field.primitive_ext:
            continue
        element = f"{field.choice}[x]" if field.choice else field.name
        url = bound.get(f"{defpath}.{element}")
        if url:
            out[field.name] = url
    return out


@cache
def _valueset(url: str) -> tuple[frozenset[str], frozenset[str], frozenset[tuple[str, str]]] | None:
    """(codes, systems, (system, code) pairs) of a required value set; ``None`` when it cannot be enumerated."""
    pairs = valueset_codes(url)
    if pairs is None:
        return None
    return frozenset(c for _, c in pairs), frozenset(s for s, _ in pairs), frozenset(pairs)


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Public API


def _not_supported(resource_type: str, expression: list[str] | None = None) -> Unprocessable:
    """The error for an R4 type that R4B (and so this server) does not model."""
    message = (f"Resource type {resource_type} is part of FHIR R4 but is not supported by this server: its "
               "validation models (fhir.resources R4B) do not include it")
    return Unprocessable(message, issues=[Issue("not-supported", message, expression=expression or [])])


def check_type(resource_type: str) -> None:
    """Accept a resource type named in a URL: 404 for unknown names, 422 for the R4 types R4B lacks."""
    if resource_type in SUPPORTED_TYPES:
        return
    if resource_type in R4_ONLY_TYPES:
        raise _not_supported(resource_type)
    message = f"Unknown resource type {resource_type}"
    raise NotFound(message, issues=[Issue("not-supported", message)])


def validate_resource(resource: object, *, resource_type: str | None = None, resource_id: str | None = None,
                      id_rule: str = "any", allow_conditional_refs: bool = False) -> list[Issue]:
    """Validate one resource from a request body; return the issues (empty when valid).

    ``resource_type``/``resource_id`` come from the URL and must agree with the body (400 otherwise);
    ``id_rule`` is ``"any"``/``"absent-ok"`` (id optional) or ``"required"`` (update: the body must carry one).
    ``allow_conditional_refs`` permits ``Type?query`` references (inside a transaction). Raises ``BadRequest``
    when the body is not a resource of a known type, ``Unprocessable`` for an R4-only type.
    """
    if id_rule not in ID_RULES:
        raise ValueError(f"id_rule must be one of {ID_RULES}, not {id_rule!r}")
    if not isinstance(resource, dict):
        message = f"The body must be a JSON object holding a FHIR resource, not a JSON {_json_type(resource)}"
        raise BadRequest(message, issues=[Issue("structure", message, expression=["resourceType"])])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        message = "The resource has no resourceType (a JSON string naming its type is required)"
        raise BadRequest(message, issues=[Issue("structure", message, expression=["resourceType"])])
    if resource_type is not None and rtype != resource_type:
        raise BadRequest(f"resourceType {rtype} does not match the type {resource_type} in the URL",
                         expression=["resourceType"])
    if rtype in R4_ONLY_TYPES:
        raise _not_supported(rtype, ["resourceType"])
    if rtype not in SUPPORTED_TYPES:
        raise BadRequest(f"Unknown resource type {rtype}", expression=["resourceType"])
    body_id = resource.get("id")
    if id_rule == "required" and body_id is None:
        wanted = f" ({resource_id}, as in the URL)" if resource_id else ""
        raise BadRequest(f"The resource must carry its id{wanted}", expression=[f"{rtype}.id"])
    if resource_id is not None and isinstance(body_id, str) and body_id != resource_id:
        raise BadRequest(f"The id in the body ({body_id}) does not match the id in the URL ({resource_id})",
                         expression=[f"{rtype}.id"])
    walker = _Walker(allow_conditional_refs)
    try:
        walker.resource(resource, rtype, rtype, contained=False)
    except RecursionError:
        walker.issues.append(Issue("too-costly", "The resource is nested too deeply to validate",
                                   expression=[rtype]))
    except Exception:  # a validator bug must not turn bad input into a 500
        log.exception("validation of a %s failed unexpectedly", rtype)
        walker.issues.append(Issue("exception", f"The {rtype} could not be validated", expression=[rtype]))
    return walker.result()


# ---------------------------------------------------------------------------
# The walk


class _Walker:
    """Collects the issues of one resource and the resources embedded in it."""

    def __init__(self, allow_conditional_refs: bool) -> None:
        """Start with no issues."""
        self.issues: list[Issue] = []
        self.model_issues: list[Issue] = []
        self.allow_conditional = allow_conditional_refs

    def result(self) -> list[Issue]:
        """The walk's issues, then pydantic's about elements the walk did not already report."""
        seen = {expr for issue in self.issues for expr in issue.expression}
        # an array-level message (``X.category``) repeats the walk's item-level one (``X.category[0]``)
        seen |= {expr.rsplit("[", 1)[0] for expr in seen if expr.endswith("]")}
        return self.issues + [i for i in self.model_issues if not seen.intersection(i.expression)]

    def add(self, code: str, path: str, diagnostics: str) -> None:
        """Record one error at ``path``."""
        self.issues.append(Issue(code, diagnostics, expression=[path]))

    # -- resources

    def resource(self, obj: dict[str, Any], rtype: str, path: str, *, contained: bool) -> None:
        """Validate a resource (the top one or an embedded one) whose type is known and supported."""
        rid = obj.get("id")
        if isinstance(rid, str) and not ID_PATTERN.match(rid):
            self.add("value", f"{path}.id", f"Resource id '{rid}' is not a valid FHIR id "
                     "(1 to 64 characters from A-Z a-z 0-9 - .)")
        if contained and "contained" in obj:
            self.add("invariant", f"{path}.contained", "dom-2: a contained resource must not contain resources")
        model = get_fhir_model_class(rtype)
        info = _info(model)
        saved = self.allow_conditional
        if rtype == "Bundle" and obj.get("type") in _CONDITIONAL_BUNDLES:
            self.allow_conditional = True
        try:
            pruned = self.element(obj, info, path, rtype)
        finally:
            self.allow_conditional = saved
        try:
            model.model_validate(pruned)
        except ValidationError as exc:
            self.model_issues.extend(_model_issues(exc, info, path))

    def embedded(self, value: Any, path: str, field: _Field) -> None:
        """Check and validate a resource held in an element (contained, entry.resource, parameter.resource)."""
        if not isinstance(value, dict):
            self.add("structure", path, f"Element '{field.label}' must be a JSON object holding a resource, "
                     f"found {_json_type(value)}")
            return
        rtype = value.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            self.add("structure", path, "The resource has no resourceType")
        elif rtype in R4_ONLY_TYPES:
            issue = _not_supported(rtype).issues[0]
            self.add(issue.code, f"{path}.resourceType", issue.diagnostics)
        elif rtype not in SUPPORTED_TYPES:
            self.add("value", f"{path}.resourceType", f"Unknown resource type {rtype}")
        elif field.type_name != "Resource" and rtype != field.type_name:
            self.add("value", f"{path}.resourceType", f"Expected a {field.type_name}, found a {rtype}")
        else:
            self.resource(value, rtype, path, contained=field.name == "contained")

    # -- elements

    def element(self, obj: dict[str, Any], info: _ModelInfo, path: str, defpath: str) -> dict[str, Any]:
        """Walk a JSON object of model ``info``; return it, or a copy without embedded resources for pydantic."""
        if not obj:
            self.add("structure", path, f"Element '{_last(path)}' must not be an empty object")
            return obj
        fields = info.fields
        bindings = _bindings(info.model, defpath)
        pruned: dict[str, Any] | None = None
        for key, value in obj.items():
            field = fields.get(key)
            if field is None:
                if not (key == "resourceType" and info.is_resource):
                    self.add("structure", f"{path}.{key}", f"Unknown element '{key}'")
                continue
            fpath = f"{path}.{field.label}"
            if value is None:
                self.add("structure", fpath, f"Element '{field.name}' must not be null")
                continue
            if field.is_list:
                if not isinstance(value, list):
                    self.add("structure", fpath, f"Element '{field.name}' must be a JSON array, "
                             f"found {_json_type(value)}")
                    continue
                if not value:
                    self.add("structure", fpath, f"Element '{field.name}' must not be an empty array")
                    continue
                new = self.array(obj, key, value, field, fpath, defpath, bindings.get(key))
            else:
                if isinstance(value, list):
                    self.add("structure", fpath, f"Element '{field.name}' must not be an array")
                    continue
                new = self.value(value, field, fpath, defpath, bindings.get(key))
            if field.walk_only:
                self.walked_only(obj, info, new, field, fpath)
                new = _DROP
            if new is not value:
                if pruned is None:
                    pruned = dict(obj)
                if new is _DROP:
                    del pruned[key]
                else:
                    pruned[key] = new
        return obj if pruned is None else pruned

    def walked_only(self, obj: dict[str, Any], info: _ModelInfo, value: Any, field: _Field, path: str) -> None:
        """pydantic's checks of an element hidden from the parent's model, and one value per choice element."""
        owner = info.fields.get(field.label)
        if owner is not None and owner.choice:
            others = [f.name for f in info.fields.values()
                      if f.choice == owner.choice and f.name != owner.name and f.name in obj]
            if others:
                self.add("structure", f"{path.rsplit('.', 1)[0]}.{owner.choice}[x]",
                         f"Only one of the {owner.choice}[x] elements may be present ('{field.name}' and "
                         f"'{others[0]}')")
        model = field.model
        if model is None:
            return
        items = value if field.is_list and isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, dict) and item:
                try:
                    model.model_validate(item)
                except ValidationError as exc:
                    ipath = f"{path}[{index}]" if field.is_list else path
                    self.model_issues.extend(_model_issues(exc, _info(model), ipath))

    def array(self, obj: dict[str, Any], key: str, items: list[Any], field: _Field, path: str, defpath: str,
              binding: str | None) -> Any:
        """Walk the items of a repeating element; nulls only where the ``_name`` sibling holds a value."""
        if field.primitive_ext:
            sibling = obj.get(key[1:])
        elif field.kind in (_ELEM, _RES):
            sibling = None  # no primitive extensions: null is never allowed
        else:
            sibling = obj.get(f"_{key}")
            if isinstance(sibling, list) and len(sibling) != len(items):
                self.add("structure", path, f"Arrays '{key}' and '_{key}' must have the same length")
        new_items: list[Any] | None = None
        dropped = False
        for index, item in enumerate(items):
            ipath = f"{path}[{index}]"
            if item is None:
                paired = isinstance(sibling, list) and index < len(sibling)
                if paired and sibling[index] is not None:
                    continue
                if not (field.primitive_ext and paired):  # a pair of nulls is reported on the value's side
                    self.add("structure", ipath, f"Element '{key}' must not hold null here (null is only allowed "
                             "as a placeholder matched by the primitive extension array)")
                continue
            new = self.value(item, field, ipath, defpath, binding)
            if new is not item:
                if new_items is None:
                    new_items = list(items)
                if new is _DROP:
                    dropped = True
                new_items[index] = new
        if new_items is None:
            return items
        if dropped:
            new_items = [i for i in new_items if i is not _DROP]
            return new_items or _DROP
        return new_items

    def value(self, value: Any, field: _Field, path: str, defpath: str, binding: str | None) -> Any:
        """Check one value of an element; return it, its pruned copy, or ``_DROP`` for an embedded resource."""
        kind = field.kind
        if kind == _ELEM:
            if not isinstance(value, dict):
                self.add("structure", path, f"Element '{field.name}' must be a JSON object, "
                         f"found {_json_type(value)}")
                return value
            info = _info(field.model)  # type: ignore[arg-type]
            if _starts_root(info, defpath.split(".", 1)[0]):
                child_def = info.name
            else:
                child_def = _backbone_paths(defpath.split(".", 1)[0]).get(info.model) or \
                    f"{defpath}.{field.choice + '[x]' if field.choice else field.name}"
            new = self.element(value, info, path, child_def)
            if info.name == "Reference":
                self.reference(value, path)
            elif binding is not None:
                if info.name == "CodeableConcept":
                    self.codeable_concept(value, path, binding)
                elif info.name == "Coding":
                    self.coding(value, path, binding)
            return new
        if kind == _RES:
            self.embedded(value, path, field)
            return _DROP
        if kind == _STR or kind == _B64:
            if not isinstance(value, str):
                self.add("value", path, f"Element '{field.name}' must be a JSON string, found {_json_type(value)}")
            elif not value:
                self.add("value", path, f"Element '{field.name}' must not be an empty string")
            elif kind == _B64:
                self.base64(value, field, path)
            elif binding is not None:
                self.code(value, path, binding)
        elif kind == _BOOL:
            if not isinstance(value, bool):
                self.add("value", path, f"Element '{field.name}' must be a JSON boolean (true or false), "
                         f"found {_json_type(value)}")
        elif kind == _INT:
            if not isinstance(value, int) or isinstance(value, bool):
                found = value if isinstance(value, float | Decimal) else _json_type(value)
                self.add("value", path, f"Element '{field.name}' must be a JSON integer (no fraction or exponent), "
                         f"found {found}")
        elif kind == _DEC:
            if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
                self.add("value", path, f"Element '{field.name}' must be a JSON number, found {_json_type(value)}")
            elif isinstance(value, Decimal) and not value.is_finite() or isinstance(value, float) and \
                    not math.isfinite(value):
                self.add("value", path, f"Element '{field.name}' must be a finite number")
        return value

    # -- rules on particular types

    def base64(self, value: str, field: _Field, path: str) -> None:
        """base64Binary content must decode (RFC 4648; whitespace between groups is tolerated)."""
        try:
            binascii.a2b_base64("".join(value.split()), strict_mode=True)
        except (binascii.Error, ValueError):
            self.add("value", path, f"Element '{field.name}' is not valid base64")

    def code(self, code: str, path: str, url: str) -> None:
        """A ``code`` element must be in its required value set."""
        vs = _valueset(url)
        if vs is not None and code not in vs[0]:
            self.add("code-invalid", path, f"Code '{code}' is not in the required value set {url}")

    def coding(self, coding: dict[str, Any], path: str, url: str) -> None:
        """A Coding bound to a required value set must be one of its (system, code) pairs."""
        vs = _valueset(url)
        code, system = coding.get("code"), coding.get("system")
        if vs is None or not isinstance(code, str):
            return
        if isinstance(system, str):
            if (system, code) not in vs[2]:
                self.add("code-invalid", path, f"Coding {system}|{code} is not in the required value set {url}")
        elif code not in vs[0]:
            self.add("code-invalid", path, f"Code '{code}' is not in the required value set {url}")

    def codeable_concept(self, concept: dict[str, Any], path: str, url: str) -> None:
        """A CodeableConcept bound to a required value set must have at least one coding (system and code) from it;
        text alone, extensions alone, or codings of other systems only are not enough (R4 terminologies.html#required:
        "the concept in this element SHALL be from the specified value set")."""
        vs = _valueset(url)
        if vs is None:
            return
        codings = concept.get("coding")
        pairs = [(c.get("system") if isinstance(c.get("system"), str) else None, c["code"])
                 for c in (codings if isinstance(codings, list) else []) if isinstance(c, dict)
                 and isinstance(c.get("code"), str)]
        if any(pair in vs[2] for pair in pairs):
            return
        if not pairs:
            self.add("code-invalid", path, f"No coding given; a coding from the required value set {url} is required "
                     "(text alone is not enough)")
            return
        shown = ", ".join(f"{s or '(no system)'}|{c}" for s, c in pairs)
        self.add("code-invalid", path, f"None of the codings ({shown}) is in the required value set {url}; "
                 "one of them must be (with its system)")

    def reference(self, ref: dict[str, Any], path: str) -> None:
        """``Reference.reference``: Type/id[/_history/vid], an absolute URL, #id, or (if allowed) Type?query."""
        target = ref.get("reference")
        if not isinstance(target, str) or not target:
            return
        rpath = f"{path}.reference"
        literal = _LITERAL_REF.fullmatch(target)
        if literal:
            if literal.group(1) not in ALL_TYPES:
                self.add("value", rpath, f"Reference '{target}' names an unknown resource type '{literal.group(1)}'")
            return
        if _ABSOLUTE_REF.fullmatch(target) or _CONTAINED_REF.fullmatch(target):
            return
        conditional = _CONDITIONAL_REF.fullmatch(target)
        if conditional:
            if conditional.group(1) not in ALL_TYPES:
                self.add("value", rpath, f"Reference '{target}' names an unknown resource type "
                         f"'{conditional.group(1)}'")
            elif not self.allow_conditional:
                self.add("value", rpath, f"Conditional reference '{target}' is only allowed in a transaction")
            return
        self.add("value", rpath, f"Reference '{target}' is not a valid reference (expected Type/id, "
                 "Type/id/_history/vid, an absolute URL, urn:uuid:, urn:oid: or #id)")


class _Drop:
    """Marker for a value taken out of the copy given to pydantic."""


_DROP: Any = _Drop()


def _last(path: str) -> str:
    """Last element name of an expression, without an index."""
    return path.rsplit(".", 1)[-1].split("[", 1)[0]


# ---------------------------------------------------------------------------
# pydantic errors -> issues


def _loc_path(info: _ModelInfo | None, loc: tuple[int | str, ...], path: str) -> tuple[str, _ModelInfo | None]:
    """Expression for a pydantic ``loc``: JSON names and [index], pydantic's type tags left out.

    Also returns the model info of the element the loc ends in (for choice-element messages).
    """
    last = len(loc) - 1
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        field = None
        if info is not None:
            field = info.fields.get(part) or info.python.get(part)
        if field is not None:
            path += f".{field.label}"
            info = _info(field.model) if field.kind == _ELEM and field.model is not None else None
        elif position == last and info is not None:
            path += f".{part}"  # an unknown element
            info = None
    return path, info


def _model_issues(exc: ValidationError, info: _ModelInfo, path: str) -> list[Issue]:
    """One issue per pydantic error."""
    out: list[Issue] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error.get("loc") or ())
        kind = str(error.get("type", ""))
        message = str(error.get("msg", "")).removeprefix("Value error, ").replace("\n", " ")
        expr, where = _loc_path(info, loc, path)
        name = _last(expr)
        choice = _CHOICE_FIELDS.search(message)
        if choice and where is not None:
            field = where.fields.get(choice.group(1))
            if field is not None and field.choice:
                expr = f"{expr}.{field.choice}[x]"
                if "got multiple" in message:
                    out.append(Issue("structure", f"Only one of the {field.choice}[x] elements may be present",
                                     expression=[expr]))
                else:
                    out.append(Issue("required", f"One of the {field.choice}[x] elements is required",
                                     expression=[expr]))
                continue
        if kind == "extra_forbidden":
            out.append(Issue("structure", f"Unknown element '{name}'", expression=[expr]))
        elif kind in ("missing", "model_field_validation.missing"):
            out.append(Issue("required", f"Missing required element '{name}'", expression=[expr]))
        else:
            out.append(Issue("value", f"Invalid value for '{name}': {message}", expression=[expr]))
    return out
