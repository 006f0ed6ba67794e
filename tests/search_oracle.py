"""A brute-force reference evaluator of FHIR R4 search over raw resource JSON, to check the server against.

Written from the specification (https://hl7.org/fhir/R4/search.html), independently of `fhirserver.search`: it
walks each resource in plain Python and decides, for a query, whether the resource matches. It covers a focused
set of parameters (`PARAMS`): Observation, Patient and Encounter parameters of every type that the server indexes
(token, string, reference, date, quantity) with their modifiers and prefixes, plus `_id`.

Where the specification leaves a choice to the server, the answer for a resource is *undetermined* (`None`) rather
than a guess, and a server may include the resource or not. Every such place is listed here:
- `name` (HumanName): family and given must be searched; prefix, suffix and text may be ("a server defined search
  that may match any of the string fields in the HumanName").
- `ne` on a resource that has no value for the parameter; `ne` on a quantity with another unit.
- `ge`/`le` on dates where the target straddles the start (end) of the search range: the prefix table reads
  "the range above the search value intersects the target, or the search range fully contains the target", and
  servers commonly read "above" as "from the start of the search value on".
- `eq`/`ne` on numbers whose target has less precision than the search value (`100` searched as `100.00`): the
  target's point lies in the search range but its implicit range is not contained in it.
- `ap`: a match must overlap the search range; beyond that a margin "recommended 10%" (for dates, 10% of the gap
  to now) is the server's choice.
- token searches with a system on `code` elements, whose system is only implied by the binding.

Other conventions: a parameter with an empty value is ignored; date values without a time zone are taken in UTC
(the server's local zone, as the spec asks); a Period without an end is ongoing (+infinity) and one without a start
began at -infinity; number prefixes other than eq/ne/ap ignore the implicit precision ("treated as if they have
arbitrarily high precision"); a reference to this server's own base is the same as the relative one ("a relative
reference resolving to the same value as a specified absolute URL, or vice versa, qualifies as a match").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

Verdict = bool | None  # True: must match; False: must not; None: the specification lets the server decide
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
CONTROL = frozenset({"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_format",
                     "_pretty", "_contained", "_containedType"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INF = math.inf


class SearchError(ValueError):
    """The query is invalid: the server must answer 400 naming `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class OracleUnsupported(NotImplementedError):
    """The oracle does not implement this parameter or modifier; it cannot judge the query."""


# ---------------------------------------------------------------------------------------------------------------
# Three-valued logic


def any3(verdicts: Iterable[Verdict]) -> Verdict:
    """OR: True if one is True, False if all are False, else undetermined."""
    undetermined = False
    for v in verdicts:
        if v is True:
            return True
        undetermined = undetermined or v is None
    return None if undetermined else False


def all3(verdicts: Iterable[Verdict]) -> Verdict:
    """AND: False if one is False, True if all are True, else undetermined."""
    undetermined = False
    for v in verdicts:
        if v is False:
            return False
        undetermined = undetermined or v is None
    return None if undetermined else True


def not3(verdict: Verdict) -> Verdict:
    """NOT: undetermined stays undetermined."""
    return None if verdict is None else not verdict


# ---------------------------------------------------------------------------------------------------------------
# Escaping: "\," "\|" "\$" "\\" are literal characters in search values


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not escaped by a backslash; the pieces keep their escapes."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if text[i] == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """Drop the backslash of every escaped character."""
    return re.sub(r"\\(.)", r"\1", text)


# ---------------------------------------------------------------------------------------------------------------
# Dates: every value is a half-open range [lo, hi) of microseconds since 1970 (±inf for open Period ends)

_DATE = re.compile(r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
                   r"(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?")


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"bad time zone {text}")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[0] == "-" else delta)


def date_range(text: str) -> tuple[int, int]:
    """The range a FHIR date, dateTime or instant covers: `2024-03` is the whole of March (in UTC when zone-less)."""
    m = _DATE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a date: {text!r}")
    year = int(m["y"])
    month, day = int(m["m"] or 1), int(m["d"] or 1)
    hour, minute, second = int(m["H"] or 0), int(m["M"] or 0), int(m["S"] or 0)
    fraction = m["f"] or ""
    micro = int((fraction + "000000")[:6])
    start = datetime(year, month, day, hour, minute, second, micro, tzinfo=_zone(m["z"]))
    try:
        return _micros(start), _micros(_range_end(start, m))
    except OverflowError:  # the range ends after 9999-12-31T23:59:59.999999
        return _micros(start), _micros(datetime.max.replace(tzinfo=UTC)) + 1


def _range_end(start: datetime, m: re.Match) -> datetime:
    """The (exclusive) end of the range that starts at `start`, by the precision written in `m`."""
    year, month, fraction = start.year, start.month, m["f"] or ""
    if m["m"] is None:
        if year == 9999:
            raise OverflowError
        return start.replace(year=year + 1)
    if m["d"] is None:
        if (year, month) == (9999, 12):
            raise OverflowError
        return start.replace(year=year + month // 12, month=month % 12 + 1)
    if m["H"] is None:
        return start + timedelta(days=1)
    if m["S"] is None:
        return start + timedelta(minutes=1)
    if not fraction:
        return start + timedelta(seconds=1)
    return start + timedelta(microseconds=10 ** max(0, 6 - len(fraction)))


def _date_verdict(prefix: str, search: tuple[int, int], target: tuple[float, float], now: int) -> Verdict:
    """The prefix table of search.html on ranges: S = search range, T = target range, both half-open."""
    sl, sh = search
    tl, th = target
    contains = sl <= tl and th <= sh  # the search range fully contains the target range
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":  # the range above the search value intersects the target
        return th > sh
    if prefix == "lt":  # the range below the search value intersects the target
        return tl < sl
    if prefix == "ge":
        return True if th > sh or contains else (None if th > sl else False)
    if prefix == "le":
        return True if tl < sl or contains else (None if tl < sh else False)
    if prefix == "sa":  # no overlap, and the target lies above
        return tl >= sh
    if prefix == "eb":  # no overlap, and the target lies below
        return th <= sl
    # ap: overlap is a match; a margin of 10% of the gap to now (or the search precision) is the server's choice
    if tl < sh and sl < th:
        return True
    margin = max(sh - sl, abs(now - sl) // 10)
    return None if tl < sh + margin and sl - margin < th else False


# ---------------------------------------------------------------------------------------------------------------
# Numbers: a search value has an implicit range of half its last digit; targets are points with their own range

_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, lo, hi): `100` is [99.5, 100.5), `6.30` is [6.295, 6.305)."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    value = Decimal(text)
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)
    return value, value - half, value + half


def _as_decimal(raw: Any) -> Decimal | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        return Decimal(raw) if isinstance(raw, Decimal | int | str) else Decimal(repr(raw))
    except InvalidOperation:
        return None


def _number_verdict(prefix: str, search: tuple[Decimal, Decimal, Decimal], target: Decimal) -> Verdict:
    """A prefixed number (value, lo, hi) against a target point; eq/ne use the implicit range, others the value."""
    value, lo, hi = search
    if prefix in ("eq", "ne"):
        _, tlo, thi = number_range(str(target))
        inside = lo <= target < hi
        equal = True if inside and lo <= tlo and thi <= hi else (None if inside else False)
        return equal if prefix == "eq" else not3(equal)
    if prefix in ("gt", "sa"):
        return target > value
    if prefix in ("lt", "eb"):
        return target < value
    if prefix == "ge":
        return target >= value
    if prefix == "le":
        return target <= value
    # ap: inside the implicit range is a match; within 10% (or the target's own range overlapping) may be
    if lo <= target < hi:
        return True
    _, tlo, thi = number_range(str(target))
    margin = max(abs(value) / 10, hi - value)
    return None if abs(target - value) <= margin or (tlo < hi and lo < thi) else False


# ---------------------------------------------------------------------------------------------------------------
# Strings: "equals or starts with, after both have been normalized by case and accent"


def normalize(text: str) -> str:
    """Case- and accent-folded text."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").casefold()


def string_matches(target: str, value: str, modifier: str | None) -> bool:
    """String search: starts-with after folding; `:exact` is equality as written; `:contains` is folded substring."""
    if modifier == "exact":
        return target == value
    if modifier == "contains":
        return normalize(value) in normalize(target)
    return normalize(target).startswith(normalize(value))


# ---------------------------------------------------------------------------------------------------------------
# Extracted values


@dataclass(frozen=True)
class TokenValue:
    """One coded element: its (system, code) pairs, its texts (for :text) and Identifier.type codings."""

    codings: tuple[tuple[str | None, str | None], ...]
    texts: tuple[str, ...] = ()
    types: tuple[tuple[str | None, str | None], ...] = ()
    implicit_system: str | None = None  # for `code` elements: the system their binding implies


@dataclass(frozen=True)
class StringValue:
    text: str
    searched: bool = True  # False: the server may or may not search this field


@dataclass(frozen=True)
class QuantityValue:
    value: Decimal
    unit: str | None
    system: str | None
    code: str | None


def _list(x: Any) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _concept(cc: dict) -> TokenValue:
    codings = tuple((c.get("system"), c.get("code")) for c in cc.get("coding", []))
    texts = tuple(t for t in [cc.get("text"), *(c.get("display") for c in cc.get("coding", []))] if t)
    return TokenValue(codings, texts)


def _coding(c: dict) -> TokenValue:
    return TokenValue(((c.get("system"), c.get("code")),), tuple(t for t in [c.get("display")] if t))


def _identifier(i: dict) -> TokenValue:
    kind = i.get("type") or {}
    types = tuple((c.get("system"), c.get("code")) for c in kind.get("coding", []))
    return TokenValue(((i.get("system"), i.get("value")),), tuple(t for t in [kind.get("text")] if t), types)


def _code(system: str) -> Callable[[Any], list[TokenValue]]:
    def extract(raw: Any) -> list[TokenValue]:
        return [TokenValue(((None, raw),), implicit_system=system)] if isinstance(raw, str) else []
    return extract


def _boolean(raw: Any) -> list[TokenValue]:
    return [TokenValue(((None, "true" if raw else "false"),))] if isinstance(raw, bool) else []


def _period(p: dict) -> tuple[float, float]:
    lo = date_range(p["start"])[0] if p.get("start") else -INF
    hi = date_range(p["end"])[1] if p.get("end") else INF
    return lo, hi


def _effective(r: dict) -> list[tuple[float, float]]:
    if "effectiveDateTime" in r:
        return [date_range(r["effectiveDateTime"])]
    if "effectiveInstant" in r:
        return [date_range(r["effectiveInstant"])]
    if "effectivePeriod" in r:
        return [_period(r["effectivePeriod"])]
    return []


def _names(r: dict, parts: Sequence[str], optional: Sequence[str] = ()) -> list[StringValue]:
    """The strings of `parts` of every HumanName, then those of `optional` parts (which a server may search)."""
    out: list[StringValue] = []
    for name in r.get("name", []):
        for part in (*parts, *optional):
            out.extend(StringValue(t, part in parts) for t in _list(name.get(part)) if isinstance(t, str))
    return out


def _quantity(q: dict | None) -> list[QuantityValue]:
    if not q:
        return []
    value = _as_decimal(q.get("value"))
    return [] if value is None else [QuantityValue(value, q.get("unit"), q.get("system"), q.get("code"))]


def _refs(*refs: Any, only: str | None = None) -> list[str]:
    out = []
    for ref in refs:
        target = (ref or {}).get("reference") if isinstance(ref, dict) else None
        if isinstance(target, str) and (only is None or _ref_type(target) == only):
            out.append(target)
    return out


def _ref_type(ref: str) -> str | None:
    m = re.search(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$", ref)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Param:
    """A search parameter of one resource type: its type, its values in a resource, reference targets."""

    type: str
    extract: Callable[[dict], list]
    targets: tuple[str, ...] = ()
    present: Callable[[dict], bool] | None = None  # the element is there, even if it holds nothing searchable


def _missing(param: Param, resource: dict, values: list, wanted: str) -> Verdict:
    """`:missing=true|false`: "resources that don't have a value for the parameter". An element that is present but
    holds nothing to search (a CodeableConcept with only text, a Quantity without a value, a HumanName with only
    `use`) may count either way."""
    if param.type == "token":
        has = any(code for el in values for _, code in el.codings)
        partial = bool(values)
    elif param.type == "string":
        has = any(v.searched for v in values)
        partial = bool(values) or (param.present(resource) if param.present else False)
    else:
        has = bool(values)
        partial = param.present(resource) if param.present else False
    if not has and partial:
        return None
    return has == (wanted == "false")


OBS_STATUS = "http://hl7.org/fhir/observation-status"
GENDER = "http://hl7.org/fhir/administrative-gender"
ENC_STATUS = "http://hl7.org/fhir/encounter-status"

PARAMS: dict[str, dict[str, Param]] = {
    "Observation": {
        "code": Param("token", lambda r: [_concept(r["code"])] if "code" in r else []),
        "category": Param("token", lambda r: [_concept(c) for c in r.get("category", [])]),
        "combo-code": Param("token", lambda r: ([_concept(r["code"])] if "code" in r else [])
                            + [_concept(c["code"]) for c in r.get("component", []) if "code" in c]),
        "component-code": Param("token", lambda r: [_concept(c["code"]) for c in r.get("component", [])
                                                    if "code" in c]),
        "value-concept": Param("token", lambda r: [_concept(r["valueCodeableConcept"])]
                               if "valueCodeableConcept" in r else []),
        "status": Param("token", lambda r: _code(OBS_STATUS)(r.get("status"))),
        "identifier": Param("token", lambda r: [_identifier(i) for i in r.get("identifier", [])]),
        "subject": Param("reference", lambda r: _refs(r.get("subject")), ("Device", "Group", "Location", "Patient")),
        "patient": Param("reference", lambda r: _refs(r.get("subject"), only="Patient"), ("Patient",)),
        "encounter": Param("reference", lambda r: _refs(r.get("encounter")), ("Encounter",)),
        "date": Param("date", _effective),
        "value-quantity": Param("quantity", lambda r: _quantity(r.get("valueQuantity")),
                                present=lambda r: "valueQuantity" in r),
        "value-string": Param("string", lambda r: [StringValue(r["valueString"])] if "valueString" in r else []),
    },
    "Patient": {
        "name": Param("string", lambda r: _names(r, ("family", "given"), ("prefix", "suffix", "text")),
                      present=lambda r: bool(r.get("name"))),
        "family": Param("string", lambda r: _names(r, ("family",))),
        "given": Param("string", lambda r: _names(r, ("given",))),
        "birthdate": Param("date", lambda r: [date_range(r["birthDate"])] if "birthDate" in r else []),
        "gender": Param("token", lambda r: _code(GENDER)(r.get("gender"))),
        "identifier": Param("token", lambda r: [_identifier(i) for i in r.get("identifier", [])]),
        "active": Param("token", lambda r: _boolean(r.get("active"))),
    },
    "Encounter": {
        "date": Param("date", lambda r: [_period(r["period"])] if "period" in r else []),
        "status": Param("token", lambda r: _code(ENC_STATUS)(r.get("status"))),
        "class": Param("token", lambda r: [_coding(r["class"])] if "class" in r else []),
        "identifier": Param("token", lambda r: [_identifier(i) for i in r.get("identifier", [])]),
        "subject": Param("reference", lambda r: _refs(r.get("subject")), ("Group", "Patient")),
        "patient": Param("reference", lambda r: _refs(r.get("subject"), only="Patient"), ("Patient",)),
    },
}

MODIFIERS = {
    "token": {"missing", "not", "text", "of-type"},
    "string": {"missing", "exact", "contains"},
    "reference": {"missing"},  # plus a target type, e.g. subject:Patient
    "date": {"missing"},
    "quantity": {"missing"},
}


# ---------------------------------------------------------------------------------------------------------------
# Matching one value of one parameter against one resource


def _split_prefix(text: str) -> tuple[str, str]:
    """(prefix, rest); `eq` when no prefix is written."""
    if text[:2] in PREFIXES:
        return text[:2], text[2:]
    return "eq", text


def _token_verdict(el: TokenValue, value: str) -> Verdict:
    """`code`, `system|code`, `|code` (no system) or `system|` (any code of the system) against one element."""
    parts = split_escaped(value, "|")
    if len(parts) > 2:
        raise ValueError("a token is [system|]code")
    if len(parts) == 1:
        code = unescape(parts[0])
        return any(c == code for _, c in el.codings)
    system, code = unescape(parts[0]), unescape(parts[1])
    if el.implicit_system is not None:  # a `code` element: its system is implied, servers may not know it
        hit = any(c == code or not code for _, c in el.codings)
        return None if hit and system in ("", el.implicit_system) else False
    if not system:  # |code: the code with no system
        return any(s is None and c == code for s, c in el.codings)
    if not code:  # system|: any code of the system
        return any(s == system for s, _ in el.codings)
    return any(s == system and c == code for s, c in el.codings)


def _of_type_verdict(el: TokenValue, value: str) -> bool:
    """`identifier:of-type=typeSystem|typeCode|value`."""
    parts = [unescape(p) for p in split_escaped(value, "|")]
    if len(parts) != 3:
        raise ValueError(":of-type is system|code|value")
    system, code, ident = parts
    return (system, code) in el.types and any(c == ident for _, c in el.codings)


def _token(values: list[TokenValue], modifier: str | None, value: str) -> Verdict:
    """A token value with its modifier (:text, :of-type, :not) against every element of the parameter."""
    if modifier == "text":
        return any(string_matches(t, unescape(value), None) for el in values for t in el.texts)
    if modifier == "of-type":
        return any(_of_type_verdict(el, value) for el in values)
    hit = any3(_token_verdict(el, value) for el in values)
    # :not is "all resources that do not have a matching value", including those with no value at all
    return not3(hit) if modifier == "not" else hit


def _string(values: list[StringValue], modifier: str | None, value: str) -> Verdict:
    """A string value against every string of the parameter; a hit on an optional field is undetermined."""
    text = unescape(value)
    return any3(True if v.searched else None for v in values if string_matches(v.text, text, modifier))


def _strip_base(ref: str, base: str) -> str:
    """A reference relative to this server (its base and any `/_history/n` removed)."""
    if base and ref.startswith(base.rstrip("/") + "/"):
        ref = ref[len(base.rstrip("/")) + 1:]
    return re.sub(r"/_history/[^/]+$", "", ref)


def _reference(values: list[str], param: Param, modifier: str | None, value: str, base: str) -> Verdict:
    """`Type/id`, a bare `id` (any target type), `:Type` with an id, or an absolute URL (on this base: relative)."""
    wanted = _strip_base(unescape(value), base)
    stored = [_strip_base(v, base) for v in values]
    if modifier:  # subject:Patient=123
        wanted = wanted if "/" in wanted else f"{modifier}/{wanted}"
        return wanted in stored
    if "/" not in wanted and ":" not in wanted:  # a bare id: any target type with that id
        return any(s.rpartition("/")[2] == wanted and _ref_type(s) in param.targets for s in stored)
    return wanted in stored


def _date(values: list[tuple[float, float]], value: str, now: int) -> Verdict:
    """A prefixed date value against the ranges of the parameter; `ne` without any value is undetermined."""
    prefix, text = _split_prefix(value)
    search = date_range(text)
    if prefix == "ne" and not values:
        return None
    return any3(_date_verdict(prefix, search, v, now) for v in values)


def _quantity_verdict(values: list[QuantityValue], value: str) -> Verdict:
    """`[prefix]number[|system|code]`: the unit by system and code, or by code or unit when no system is given."""
    parts = [unescape(p) for p in split_escaped(value, "|")]
    if len(parts) not in (1, 3):
        raise ValueError("a quantity is [prefix]number[|system|code]")
    prefix, text = _split_prefix(parts[0])
    search = number_range(text)
    system, code = (parts[1], parts[2]) if len(parts) == 3 else ("", "")

    def same_unit(q: QuantityValue) -> bool:
        if system:
            return q.system == system and q.code == code
        return not code or code in (q.code, q.unit)

    verdicts: list[Verdict] = []
    for q in values:
        if not same_unit(q):
            verdicts.append(None if prefix == "ne" else False)
        else:
            verdicts.append(_number_verdict(prefix, search, q.value))
    if prefix == "ne" and not values:
        return None
    return any3(verdicts)


def value_verdict(param: Param, values: list, modifier: str | None, value: str, base: str, now: int) -> Verdict:
    """Does a resource with these extracted `values` match one comma-separated `value`?"""
    if param.type == "token":
        return _token(values, modifier, value)
    if param.type == "string":
        return _string(values, modifier, value)
    if param.type == "reference":
        return _reference(values, param, modifier, value, base)
    if param.type == "date":
        return _date(values, value, now)
    if param.type == "quantity":
        return _quantity_verdict(values, value)
    raise OracleUnsupported(param.type)


# ---------------------------------------------------------------------------------------------------------------
# Whole queries


@dataclass(frozen=True)
class Clause:
    """One `name[:modifier]=v1,v2` pair of a query: values are OR-ed."""

    name: str
    code: str
    modifier: str | None
    values: tuple[str, ...]


def parse(rtype: str, query: Sequence[tuple[str, str]]) -> list[Clause]:
    """The filtering clauses of a query; raises SearchError for invalid values, OracleUnsupported beyond PARAMS."""
    params = PARAMS.get(rtype)
    if params is None:
        raise OracleUnsupported(rtype)
    clauses = []
    for name, raw in query:
        code, _, modifier = name.partition(":")
        if code in CONTROL or raw == "":  # a parameter without a value is ignored
            continue
        values = tuple(split_escaped(raw, ","))
        if code == "_id":
            if modifier:
                raise OracleUnsupported(name)
            clauses.append(Clause(name, code, None, values))
            continue
        param = params.get(code)
        if param is None:
            raise OracleUnsupported(f"{rtype}?{code}")
        mod = modifier or None
        if mod and mod not in MODIFIERS[param.type] and not (param.type == "reference" and mod in param.targets):
            raise OracleUnsupported(name)
        if mod == "missing" and raw not in ("true", "false"):
            raise SearchError(name, ":missing takes true or false")
        for v in values:
            _check_value(name, param, mod, v)
        clauses.append(Clause(name, code, mod, values))
    return clauses


def _check_value(name: str, param: Param, modifier: str | None, value: str) -> None:
    """Raise SearchError when a value cannot be read as its parameter's type."""
    if modifier == "missing":
        return
    try:
        if param.type == "date":
            prefix, text = _split_prefix(value)
            date_range(text)
        elif param.type == "quantity":
            _quantity_verdict([], value)
        elif param.type == "token":
            if modifier == "of-type":
                _of_type_verdict(TokenValue(()), value)
            elif modifier != "text":
                _token_verdict(TokenValue(()), value)
    except ValueError as e:
        raise SearchError(name, str(e)) from e


def verdict(resource: dict, clauses: Sequence[Clause], base: str = "", now: int | None = None) -> Verdict:
    """Does `resource` match every clause (AND), where each clause matches one of its values (OR)?"""
    params = PARAMS[resource["resourceType"]]
    now = _micros(datetime.now(UTC)) if now is None else now
    results: list[Verdict] = []
    for clause in clauses:
        if clause.code == "_id":
            results.append(resource.get("id") in {unescape(v) for v in clause.values})
            continue
        param = params[clause.code]
        values = param.extract(resource)
        if clause.modifier == "missing":
            results.append(_missing(param, resource, values, clause.values[0]))
            continue
        results.append(any3(value_verdict(param, values, clause.modifier, v, base, now) for v in clause.values))
        if results[-1] is False:
            return False
    return all3(results)


@dataclass(frozen=True)
class Expected:
    """The ids a search must return (`must`) and those it may return or not (`may`)."""

    must: frozenset[str]
    may: frozenset[str] = field(default_factory=frozenset)

    def admits(self, got: Iterable[str]) -> bool:
        found = set(got)
        return self.must <= found <= self.must | self.may

    def explain(self, got: Iterable[str]) -> str:
        found = set(got)
        missing, extra = sorted(self.must - found), sorted(found - self.must - self.may)
        return f"missing (must match): {missing}; unexpected (must not match): {extra}; may: {sorted(self.may)}"


def expected(resources: Iterable[dict], rtype: str, query: Sequence[tuple[str, str]], base: str = "",
             now: int | None = None) -> Expected:
    """What a search of `rtype` with `query` over `resources` must (and may) return, by id."""
    clauses = parse(rtype, query)
    must, may = set(), set()
    for resource in resources:
        if resource.get("resourceType") != rtype:
            continue
        v = verdict(resource, clauses, base, now)
        if v is True:
            must.add(resource["id"])
        elif v is None:
            may.add(resource["id"])
    return Expected(frozenset(must), frozenset(may))
