"""Index extraction at write time: the ``idx`` subdocument and the compartments (``comp``) of a resource.

Every indexed search parameter of the resource's type (``params.py``) is evaluated and its values are stored under
the parameter's code, in a form the query side can match with plain MongoDB filters. FerretDB restrictions shape the
format: field names never contain ``.`` or start with ``$``, and no array sits directly inside an array (lists of
objects, and arrays inside those objects, are fine).

Token, string, reference and uri parameters hold a list of strings (deduplicated, sorted) under ``idx[code]``.
Date, number, quantity and composite parameters hold ONE object per key: the first under ``idx[code]``, further ones
under ``idx["code~1"]``, ``idx["code~2"]``... FerretDB v1's ``$elemMatch`` cannot test the fields of objects inside
an array, so an object list could only be queried with dot notation, where conditions may hold on different
elements; one object per key keeps every range test exact (the query side ORs over the variants that exist).

Formats by parameter type:

- token: strings. A coding or identifier with system ``s`` and code ``c`` gives ``s|c``, ``c`` and ``s|``; without
  a system ``|c`` and ``c``. ContactPoint: its value; boolean: ``true``/``false``; code, string, uri, id: as written.
  ``idx["<code>:text"]``: normalized CodeableConcept.text, Coding.display and Identifier.type.text.
  ``idx["<code>:of-type"]``: ``typeSystem|typeCode|value`` of each Identifier.type coding.
- string: ``idx[code]`` normalized (``normalize_string``) for starts-with/contains; ``idx["<code>:exact"]`` the
  originals. HumanName and Address give each part separately.
- reference: ``Type/id`` (``/_history/n`` dropped); absolute URLs as written (not their ``Type/id`` tail); canonical
  and uri values as written (and without ``|version``); contained ``#id`` references are skipped.
  ``idx["<code>:identifier"]``: tokens of Reference.identifier.
- date: ``{"lo": datetime, "hi": datetime}`` objects, timezone-aware UTC, both ends inclusive, microsecond
  resolution. A partial value covers its whole range (``2024-03`` -> March 1 00:00 .. March 31 23:59:59.999999);
  a date or dateTime without a timezone is taken as UTC. Period: start..end, open ends at 0001-01-01 / 9999-12-31.
  Timing: the outer limits of its events and ``repeat.boundsPeriod``.
- number: ``{"v", "lo", "hi"}`` floats; ``lo``..``hi`` (hi exclusive) is the implicit precision range.
- quantity: ``{"v", "lo", "hi", "s", "c", "u"}`` (system, code, unit; ``""`` when absent). Money: ``c`` is the
  currency and ``s`` is ``urn:iso:std:iso:4217``. Range and SampledData values are not indexed.
- uri: strings as written.
- composite: one object per element the composite expression selects, ``{component code: values}``: a list of strings
  for token/string/reference/uri components, one object for a date/number/quantity component; elements missing a
  component are left out.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from conformance.definitions import compartment_params

from .params import Item, SearchParam, child_slots, indexed_params, split_union

log = logging.getLogger("fhirserver.search.extract")
_REPORTED: set[tuple[str, str]] = set()
COMPARTMENTS = ("Patient", "Encounter", "Practitioner", "RelatedPerson", "Device")
SPREAD_TYPES = frozenset({"date", "number", "quantity", "composite"})
RANGE_TYPES = frozenset({"date", "number", "quantity"})

MIN_DATETIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_DATETIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_NAIVE_MIN = MIN_DATETIME.replace(tzinfo=None)
_NAIVE_MAX = MAX_DATETIME.replace(tzinfo=None)
_ONE_MICROSECOND = timedelta(microseconds=1)
_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"})
_NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_PRIMITIVES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant", "integer",
        "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip
ISO_4217 = "urn:iso:std:iso:4217"

Values = dict[str, list]


# ---------------------------------------------------------------------------
# Entry points


def extract_index(resource: dict) -> dict[str, list]:
    """The ``idx`` subdocument of ``resource``: parameter code (and ``code:modifier``) -> list of index values."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return {}
    idx: dict[str, list] = {}
    for param, keys in _plan(resource_type):
        if keys is not None and keys.isdisjoint(resource):
            continue  # none of the elements the expression starts from is there: nothing to evaluate
        try:
            items = param.evaluate(resource, resource_type, resource)
        except Exception as exc:  # noqa: BLE001 - fhirpathpy lacks some functions (hasExtension): skip that one
            _unindexable(resource_type, param.code, exc)
            continue
        if not items:
            continue
        if param.type == "composite":
            values = {"": _composite_values(param, items, resource)}
        else:
            values = _VALUES[param.type](items)
        for suffix, found in values.items():
            if not found:
                continue
            if param.type in SPREAD_TYPES:
                # FerretDB's $elemMatch cannot test fields of objects in an array, so each range or composite
                # value gets a key of its own: code, code~1, code~2, ... (see variant_keys).
                for n, item in enumerate(found):
                    idx[variant_key(param.code + suffix, n)] = item
            else:
                idx[param.code + suffix] = found
    return idx


_FIRST_FIELD = re.compile(r"\(*([A-Z][A-Za-z]*)\.([a-z][A-Za-z0-9]*)(\(?)")


@cache
def _plan(resource_type: str) -> tuple[tuple[SearchParam, frozenset[str] | None], ...]:
    """The indexed parameters of ``resource_type``, each with the top-level JSON keys its expression starts from
    (``None`` when that cannot be told): a resource holding none of them gives the parameter no value."""
    return tuple((param, _top_keys(param, resource_type)) for param in indexed_params(resource_type))


def _top_keys(param: SearchParam, resource_type: str) -> frozenset[str] | None:
    """Top-level keys that a path-walker expression (``Type.field...``, ``(Type.field as T)``,
    ``Type.extension('url')``) reads first; ``None`` for anything else, which is always evaluated."""
    if not param.fast:
        return None
    keys: set[str] = set()
    for branch in split_union(param.expression):
        m = _FIRST_FIELD.match(branch.strip())
        if not m or branch.count("'") % 2 or m.group(1) not in (resource_type, "Resource", "DomainResource"):
            return None
        field, call = m.group(2), m.group(3)
        if field == "extension":
            keys.add("extension")
        elif call:
            return None  # a function on the resource itself (``Type.where(...)``)
        else:  # the walker looks the field up with child_slots too (a choice element gives one key per type)
            keys.update(key for key, _ in child_slots(resource_type, field))
    return frozenset(keys)


def _unindexable(resource_type: str, code: str, exc: Exception) -> None:
    """Log (once per parameter) a parameter whose official expression cannot be evaluated here."""
    if (resource_type, code) not in _REPORTED:
        _REPORTED.add((resource_type, code))
        log.warning("search parameter not indexed", extra={"type": resource_type, "param": code, "error": str(exc)})


def variant_key(code: str, n: int) -> str:
    """The key of the n-th value of a range or composite parameter: `date`, `date~1`, `date~2`, ..."""
    return code if n == 0 else f"{code}~{n}"


def compartments(resource_type: str, resource_id: str, idx: dict[str, list]) -> list[str]:
    """Compartments (``Patient/123``) the resource is in, from the references in its ``idx``.

    A resource is in compartment ``C/x`` when one of the compartment's parameters for its type references ``C/x``;
    a Patient (Encounter, ...) is also in its own compartment.
    """
    found: set[str] = set()
    for compartment, params in _compartment_links(resource_type):
        prefix = compartment + "/"
        for code in params:
            for ref in idx.get(code, ()):
                if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix) :]:
                    found.add(ref)
        if resource_type == compartment and resource_id:
            found.add(prefix + resource_id)
    return sorted(found)


@cache
def _compartment_links(resource_type: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(compartment, parameter codes) pairs for ``resource_type`` (``{def}`` = the resource itself, left out)."""
    return tuple((c, tuple(p for p in compartment_params(c, resource_type) if p != "{def}")) for c in COMPARTMENTS)


# ---------------------------------------------------------------------------
# Shared value helpers (also used by the query side)


def normalize_string(text: str) -> str:
    """Case-folded, accents removed (NFKD, combining marks dropped), whitespace collapsed."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).split())


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _plus(value: datetime, delta: timedelta) -> datetime | None:
    """``value + delta``, ``None`` when that leaves the datetime range."""
    try:
        return value + delta
    except OverflowError:
        return None


def date_range(text: Any) -> tuple[datetime, datetime] | None:
    """Inclusive UTC range covered by a FHIR date, dateTime or instant at its precision; ``None`` if not one.

    Values without a timezone (dates, partial dateTimes, dateTimes without offset) are taken as UTC.
    """
    if not isinstance(text, str):
        return None
    m = _DATE.fullmatch(text.strip())
    if not m:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, frac, tz = m.groups()
    year = int(year_s)
    try:
        if month_s is None:
            lo = datetime(year, 1, 1)
            end = datetime(year + 1, 1, 1) if year < 9999 else None
        elif day_s is None:
            month = int(month_s)
            lo = datetime(year, month, 1)
            end = None if (year, month) == (9999, 12) else datetime(year + month // 12, month % 12 + 1, 1)
        elif hour_s is None:
            lo = datetime(year, int(month_s), int(day_s))
            end = _plus(lo, timedelta(days=1))
        else:
            micro = int(frac[:6].ljust(6, "0")) if frac else 0
            lo = datetime(year, int(month_s), int(day_s), int(hour_s), int(minute_s), int(second_s or 0), micro)
            if second_s is None:
                step = timedelta(minutes=1)
            elif not frac:
                step = timedelta(seconds=1)
            else:
                step = timedelta(microseconds=10 ** (6 - min(len(frac), 6)))
            end = _plus(lo, step)
    except ValueError:
        return None
    hi = _NAIVE_MAX if end is None else end - _ONE_MICROSECOND  # inclusive end
    if tz and tz != "Z":
        # local time = UTC + offset, so UTC = local - offset
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        shift = -offset if tz[0] == "+" else offset
        lo = _plus(lo, shift) or (_NAIVE_MIN if shift < timedelta(0) else _NAIVE_MAX)
        hi = _plus(hi, shift) or (_NAIVE_MIN if shift < timedelta(0) else _NAIVE_MAX)
    return lo.replace(tzinfo=UTC), hi.replace(tzinfo=UTC)


def number_range(value: Any) -> tuple[float, float, float] | None:
    """``(value, lo, hi)`` with the implicit precision range [lo, hi) of a FHIR decimal/integer (``1.50`` -> ±0.005).

    Pass ``decimal.Decimal`` (JSON parsed with ``parse_float=Decimal``) to keep the written precision.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    exact = value if isinstance(value, Decimal) else Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    if not exact.is_finite():
        return None
    exponent = exact.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1)
    return float(exact), float(exact - half), float(exact + half)


_HISTORY = re.compile(r"/_history/[^/]*$")


def reference_keys(reference: str) -> list[str]:
    """Index strings of a reference: ``Type/id`` or the absolute URL as written (without ``/_history/n``).

    An absolute URL is not also indexed as its ``Type/id`` tail: it may name another server's Patient/123, which
    must not put the resource into the local Patient/123 compartment.
    """
    if not reference or reference.startswith("#"):
        return []
    return [_HISTORY.sub("", reference)]


# ---------------------------------------------------------------------------
# Typed items


def _value_type(extension: dict) -> Item | None:
    """The ``value[x]`` of an Extension as a typed item."""
    for key, value in extension.items():
        if key.startswith("value") and len(key) > 5:
            name = key[5:]
            lowered = name[0].lower() + name[1:]
            return value, lowered if lowered in _PRIMITIVES else name
    return None


def _guess_type(value: Any) -> str | None:
    """A FHIR type for an untyped value, from its shape."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float | Decimal):
        return "decimal"
    if not isinstance(value, dict):
        return None
    if "resourceType" in value:
        return value["resourceType"]
    for keys, name in _SHAPES:
        if not keys.isdisjoint(value):
            return name
    return None


_SHAPES: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"coding"}), "CodeableConcept"),
    (frozenset({"reference"}), "Reference"),
    (frozenset({"start", "end"}), "Period"),
    (frozenset({"family", "given"}), "HumanName"),
    (frozenset({"line", "city", "postalCode", "country"}), "Address"),
    (frozenset({"currency"}), "Money"),
    (frozenset({"unit", "comparator"}), "Quantity"),
    (frozenset({"code"}), "Coding"),
    (frozenset({"value"}), "Identifier"),
)


def _typed_items(items: list[Item]) -> list[Item]:
    """Extensions replaced by their values, missing types guessed."""
    out: list[Item] = []
    for value, typ in items:
        if typ == "Extension":
            inner = _value_type(value) if isinstance(value, dict) else None
            if inner is None:
                continue
            value, typ = inner
        elif typ is None:
            typ = _guess_type(value)
        out.append((value, typ))
    return out


# ---------------------------------------------------------------------------
# Values by parameter type


def _seq(value: Any) -> list | tuple:
    """A repeating element as a sequence (tolerating a single value or a missing one)."""
    return value if isinstance(value, list) else () if value is None else (value,)


def _str(value: Any) -> str:
    """A string element, ``""`` when absent or not a string."""
    return value if isinstance(value, str) else ""


def _add_token(system: str, code: str, main: set[str]) -> None:
    """``s|c``, ``c`` and ``s|`` (or ``|c`` and ``c`` without a system)."""
    if code:
        main.add(code)
        main.add(f"{system}|{code}" if system else f"|{code}")
    if system:
        main.add(system + "|")


def _add_coding(coding: Any, main: set[str], text: set[str]) -> None:
    """The coding's tokens and its display."""
    if not isinstance(coding, dict):
        return
    _add_token(_str(coding.get("system")), _str(coding.get("code")), main)
    display = coding.get("display")
    if isinstance(display, str) and display.strip():
        text.add(normalize_string(display))


def _add_identifier(identifier: Any, main: set[str], text: set[str], of_type: set[str]) -> None:
    """Identifier tokens, its type text and ``typeSystem|typeCode|value``."""
    if not isinstance(identifier, dict):
        return
    value = _str(identifier.get("value"))
    _add_token(_str(identifier.get("system")), value, main)
    id_type = identifier.get("type")
    if isinstance(id_type, dict):
        type_text = id_type.get("text")
        if isinstance(type_text, str) and type_text.strip():
            text.add(normalize_string(type_text))
        if value:
            for coding in _seq(id_type.get("coding")):
                if isinstance(coding, dict) and _str(coding.get("system")) and _str(coding.get("code")):
                    of_type.add(f"{coding['system']}|{coding['code']}|{value}")


def _token_values(items: list[Item]) -> Values:
    """token: see the module docstring."""
    main: set[str] = set()
    text: set[str] = set()
    of_type: set[str] = set()
    for value, typ in _typed_items(items):
        if typ == "CodeableConcept" and isinstance(value, dict):
            for coding in _seq(value.get("coding")):
                _add_coding(coding, main, text)
            cc_text = value.get("text")
            if isinstance(cc_text, str) and cc_text.strip():
                text.add(normalize_string(cc_text))
        elif typ == "Coding":
            _add_coding(value, main, text)
        elif typ == "Identifier":
            _add_identifier(value, main, text, of_type)
        elif typ == "Reference" and isinstance(value, dict):
            _add_identifier(value.get("identifier"), main, text, of_type)
        elif typ == "ContactPoint" and isinstance(value, dict):
            if isinstance(value.get("value"), str) and value["value"]:
                main.add(value["value"])
        elif isinstance(value, bool):
            main.add("true" if value else "false")
        elif isinstance(value, str):
            if value:
                main.add(value)
        elif isinstance(value, int | float | Decimal):
            main.add(str(value))
    return {"": sorted(main), ":text": sorted(text), ":of-type": sorted(of_type)}


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_values(items: list[Item]) -> Values:
    """string: normalized values and exact originals."""
    exact: set[str] = set()

    def add(part: Any) -> None:
        if isinstance(part, list):
            for p in part:
                add(p)
        elif isinstance(part, str) and part.strip():
            exact.add(part)

    for value, typ in _typed_items(items):
        if isinstance(value, str):
            add(value)
        elif not isinstance(value, dict):
            continue
        elif typ == "HumanName":
            for key in _NAME_PARTS:
                add(value.get(key))
        elif typ == "Address":
            for key in _ADDRESS_PARTS:
                add(value.get(key))
        elif typ == "CodeableConcept":
            add(value.get("text"))
            for coding in _seq(value.get("coding")):
                if isinstance(coding, dict):
                    add(coding.get("display"))
        elif typ == "Coding":
            add(value.get("display"))
        elif typ in ("Identifier", "ContactPoint"):
            add(value.get("value"))
        elif typ == "Annotation":
            add(value.get("text"))
    return {"": sorted({normalize_string(s) for s in exact}), ":exact": sorted(exact)}


def _reference_values(items: list[Item]) -> Values:
    """reference: ``Type/id`` strings, canonicals and uris, plus Reference.identifier tokens."""
    refs: set[str] = set()
    ident: set[str] = set()
    unused: set[str] = set()
    for value, _ in _typed_items(items):
        if isinstance(value, str):
            if value.startswith("#") or not value:
                continue
            refs.add(value)
            if "|" in value:  # canonical with a version
                refs.add(value.split("|", 1)[0])
        elif isinstance(value, dict):
            if "resourceType" in value:  # a resource in place of a reference (Bundle.entry[0].resource)
                if isinstance(value.get("id"), str):
                    refs.add(f"{value['resourceType']}/{value['id']}")
                continue
            ref = value.get("reference")
            if isinstance(ref, str):
                refs.update(reference_keys(ref))
            _add_identifier(value.get("identifier"), ident, unused, unused)
    return {"": sorted(refs), ":identifier": sorted(ident)}


def _period_range(period: dict) -> tuple[datetime, datetime] | None:
    """start..end of a Period, open ends at the far past / far future."""
    start = date_range(period.get("start"))
    end = date_range(period.get("end"))
    if start is None and end is None:
        return None
    return (start[0] if start else MIN_DATETIME), (end[1] if end else MAX_DATETIME)


def _timing_range(timing: dict) -> tuple[datetime, datetime] | None:
    """Outer limits of a Timing's events and bounding period."""
    ranges = [r for r in (date_range(e) for e in _seq(timing.get("event"))) if r]
    repeat = timing.get("repeat")
    if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
        bounds = _period_range(repeat["boundsPeriod"])
        if bounds:
            ranges.append(bounds)
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _date_values(items: list[Item]) -> Values:
    """date: ``{"lo", "hi"}`` objects."""
    found: set[tuple[datetime, datetime]] = set()
    for value, typ in _typed_items(items):
        rng: tuple[datetime, datetime] | None = None
        if isinstance(value, str):
            if typ in _DATE_TYPES or typ == "string":
                rng = date_range(value)
        elif isinstance(value, dict):
            if typ == "Period":
                rng = _period_range(value)
            elif typ == "Timing":
                rng = _timing_range(value)
        if rng:
            found.add(rng)
    return {"": [{"lo": lo, "hi": hi} for lo, hi in sorted(found)]}


def _number_values(items: list[Item]) -> Values:
    """number: ``{"v", "lo", "hi"}`` objects."""
    found = set()
    for value, _ in _typed_items(items):
        rng = number_range(value)
        if rng:
            found.add(rng)
    return {"": [{"v": v, "lo": lo, "hi": hi} for v, lo, hi in sorted(found)]}


def _quantity_values(items: list[Item]) -> Values:
    """quantity: ``{"v", "lo", "hi", "s", "c", "u"}`` objects (Range and SampledData are not indexed)."""
    found = set()
    for value, typ in _typed_items(items):
        if isinstance(value, dict):
            if typ == "Money":
                rng = number_range(value.get("value"))
                currency = _str(value.get("currency"))
                if rng:
                    found.add((*rng, ISO_4217 if currency else "", currency, ""))
            elif typ in _QUANTITY_TYPES:
                rng = number_range(value.get("value"))
                if rng:
                    found.add((*rng, _str(value.get("system")), _str(value.get("code")), _str(value.get("unit"))))
        else:
            rng = number_range(value)
            if rng:
                found.add((*rng, "", "", ""))
    return {"": [{"v": v, "lo": lo, "hi": hi, "s": s, "c": c, "u": u} for v, lo, hi, s, c, u in sorted(found)]}


def _uri_values(items: list[Item]) -> Values:
    """uri: strings as written."""
    return {"": sorted({v for v, _ in _typed_items(items) if isinstance(v, str) and v})}


def _composite_values(param: SearchParam, items: list[Item], resource: dict) -> list[dict]:
    """composite: one ``{component code: values}`` object per selected element having every component.

    Token, string, reference and uri components keep their list of strings; a date, number or quantity component
    keeps its first value as one object (a component holds one such value in the official composites).
    """
    out: list[dict] = []
    for value, typ in items:
        entry: dict = {}
        for component in param.components:
            convert = _VALUES.get(component.type)
            found = convert(component.evaluate(value, typ, resource))[""] if convert else []
            if not found:
                break
            entry[component.code] = found[0] if component.type in RANGE_TYPES else found
        else:
            if entry and entry not in out:
                out.append(entry)
    return out


_VALUES = {
    "token": _token_values,
    "string": _string_values,
    "reference": _reference_values,
    "date": _date_values,
    "number": _number_values,
    "quantity": _quantity_values,
    "uri": _uri_values,
}
