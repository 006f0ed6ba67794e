"""Search queries: parsing `name[:modifier]=value[,value]` parameters and compiling them to MongoDB filters on `idx`.

Comma means OR within a parameter; a repeated parameter means AND. Every filter reads `idx` fields (or `_id`) only,
so it can use indexes. Unknown parameters are reported (lenient) or refused (strict).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl

from fhirserver.errors import BadRequest, Issue
from fhirserver.search.extract import date_range, normalize_string, number_range
from fhirserver.search.params import SearchParam, params_for

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Result parameters and others that are not filters: handled by the search interaction, not compiled here.
CONTROL = {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_format", "_pretty",
           "_contained", "_containedType", "_cursor", "_page", "_offset"}
MODIFIERS = {
    "token": {"not", "text", "of-type", "missing", "in", "not-in", "above", "below"},
    "string": {"exact", "contains", "missing"},
    "reference": {"missing", "identifier"},
    "uri": {"below", "above", "missing"},
    "date": {"missing"}, "number": {"missing"}, "quantity": {"missing"}, "composite": {"missing"},
}
SUPPORTED_TOKEN_MODIFIERS = {"not", "text", "of-type", "missing"}


@dataclass
class Parsed:
    """A parsed search: the MongoDB filter, the parameters applied (for the self link) and what was ignored."""

    filter: dict
    applied: list[tuple[str, str]] = field(default_factory=list)
    control: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[Issue] = field(default_factory=list)


def split_values(raw: str) -> list[str]:
    """Values separated by unescaped commas; `\\,` is a literal comma."""
    parts = re.split(r"(?<!\\),", raw)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] == "-"):
        return value[:2], value[2:]
    return "eq", value


def _bad(name: str, text: str) -> BadRequest:
    return BadRequest(f"search parameter {name}: {text}", expression=[name])


def _field(code: str, suffix: str = "") -> str:
    return f"idx.{code}{suffix}"


def _token(param: SearchParam, name: str, modifier: str | None, value: str) -> dict:
    if modifier == "text":
        return {_field(param.code, ":text"): {"$regex": "^" + re.escape(normalize_string(value))}}
    if modifier == "of-type":
        pieces = value.split("|")
        if len(pieces) != 3:
            raise _bad(name, f":of-type wants system|code|value, not {value!r}")
        return {_field(param.code, ":of-type"): value}
    if modifier == "not":
        return {_field(param.code): {"$ne": value}}
    return {_field(param.code): value}


def _string(param: SearchParam, modifier: str | None, value: str) -> dict:
    if modifier == "exact":
        return {_field(param.code, ":exact"): value}
    text = re.escape(normalize_string(value))
    return {_field(param.code): {"$regex": text if modifier == "contains" else "^" + text}}


def _reference(param: SearchParam, name: str, modifier: str | None, value: str, base: str) -> dict:
    if modifier == "identifier":
        return {_field(param.code, ":identifier"): value}
    if base and value.startswith(base + "/"):
        value = value[len(base) + 1:]
    if "/" in value or ":" in value:
        return {_field(param.code): value}
    targets = [modifier] if modifier else list(param.targets)
    if len(targets) == 1:
        return {_field(param.code): f"{targets[0]}/{value}"}
    return {_field(param.code): {"$in": [f"{t}/{value}" for t in targets] or [value]}}


def _date_clause(name: str, prefix: str, lo: datetime, hi: datetime) -> dict:
    """Range semantics of FHIR date search over stored {lo, hi} (both inclusive)."""
    clauses = {
        "eq": {"lo": {"$gte": lo}, "hi": {"$lte": hi}},
        "gt": {"hi": {"$gt": hi}},
        "lt": {"lo": {"$lt": lo}},
        "ge": {"hi": {"$gte": lo}},
        "le": {"lo": {"$lte": hi}},
        "sa": {"lo": {"$gt": hi}},
        "eb": {"hi": {"$lt": lo}},
    }
    if prefix == "ap":
        span = max((hi - lo) * 0.1, hi - lo)
        return {"lo": {"$lte": hi + span}, "hi": {"$gte": lo - span}}
    return clauses[prefix]


def _date(param: SearchParam, name: str, value: str) -> dict:
    prefix, text = _split_prefix(value)
    bounds = date_range(text)
    if bounds is None:
        raise _bad(name, f"{value!r} is not a valid date, dateTime or instant (with an optional prefix)")
    lo, hi = bounds
    path = _field(param.code)
    if prefix == "ne":
        return {path: {"$not": {"$elemMatch": _date_clause(name, "eq", lo, hi)}}}
    return {path: {"$elemMatch": _date_clause(name, prefix, lo, hi)}}


def _number_clause(prefix: str, v: float, lo: float, hi: float) -> dict:
    return {
        "eq": {"v": {"$gte": lo, "$lt": hi}},
        "gt": {"v": {"$gt": v}}, "lt": {"v": {"$lt": v}}, "ge": {"v": {"$gte": v}}, "le": {"v": {"$lte": v}},
        "sa": {"v": {"$gt": v}}, "eb": {"v": {"$lt": v}},
        "ap": {"v": {"$gte": v - abs(v) * 0.1, "$lte": v + abs(v) * 0.1}},
    }[prefix]


def _numeric(name: str, text: str) -> tuple[float, float, float]:
    try:
        found = number_range(Decimal(text))
    except InvalidOperation:
        found = None
    if found is None:
        raise _bad(name, f"{text!r} is not a number")
    return found


def _number(param: SearchParam, name: str, value: str) -> dict:
    prefix, text = _split_prefix(value)
    v, lo, hi = _numeric(name, text)
    clause = _number_clause(prefix, v, lo, hi)
    if prefix == "ne":
        return {_field(param.code): {"$not": {"$elemMatch": _number_clause("eq", v, lo, hi)}}}
    return {_field(param.code): {"$elemMatch": clause}}


def _quantity(param: SearchParam, name: str, value: str) -> dict:
    """`[prefix]number|system|code`; a code without a system matches the code or the unit."""
    number, *rest = split_pipes(value)
    prefix, text = _split_prefix(number)
    v, lo, hi = _numeric(name, text)
    match = _number_clause("eq" if prefix == "ne" else prefix, v, lo, hi)
    system, code = (rest + ["", ""])[:2] if rest else ("", "")
    if system:
        match = {**match, "s": system}
    # FerretDB refuses $or inside $elemMatch, so alternatives are separate $elemMatch clauses.
    variants = [{**match, "c": code}] if code and system else \
        [{**match, "c": code}, {**match, "u": code}] if code else [match]
    op = "$not" if prefix == "ne" else None
    clauses = [{_field(param.code): {"$not": {"$elemMatch": m}} if op else {"$elemMatch": m}} for m in variants]
    if len(clauses) == 1:
        return clauses[0]
    return {"$and": clauses} if op else {"$or": clauses}


def split_pipes(value: str) -> list[str]:
    return [p.replace("\\|", "|") for p in re.split(r"(?<!\\)\|", value)]


def _uri(param: SearchParam, modifier: str | None, value: str) -> dict:
    if modifier == "below":
        return {_field(param.code): {"$regex": "^" + re.escape(value)}}
    if modifier == "above":
        prefixes = [value[:i] for i in range(len(value), 0, -1) if i == len(value) or value[i] == "/"]
        return {_field(param.code): {"$in": prefixes}}
    return {_field(param.code): value}


def _one(param: SearchParam, name: str, modifier: str | None, value: str, base: str) -> dict:
    """The filter of one value of one parameter."""
    kind = param.type
    if kind == "token":
        return _token(param, name, modifier, value)
    if kind == "string":
        return _string(param, modifier, value)
    if kind == "reference":
        return _reference(param, name, modifier, value, base)
    if kind == "date":
        return _date(param, name, value)
    if kind == "number":
        return _number(param, name, value)
    if kind == "quantity":
        return _quantity(param, name, value)
    if kind == "uri":
        return _uri(param, modifier, value)
    raise _bad(name, f"{kind} parameters are not searchable yet")


def _special(code: str, modifier: str | None, values: list[str], name: str) -> dict | None:
    if code == "_id":
        return {"_id": {"$in": values}} if len(values) > 1 else {"_id": values[0]}
    return None


def parse(rtype: str, query: str | list[tuple[str, str]], base: str = "", strict: bool = False) -> Parsed:
    """Parse and compile a search on `rtype`; unknown parameters are 400 when `strict`, else reported."""
    pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query
    known = params_for(rtype)
    clauses: list[dict] = []
    out = Parsed(filter={})
    for name, raw in pairs:
        code, _, modifier = name.partition(":")
        modifier = modifier or None
        if code in CONTROL:
            out.control.setdefault(code, []).append(raw)
            continue
        values = split_values(raw)
        if not raw:
            out.ignored.append(Issue("invalid", f"search parameter {name} has no value and was ignored",
                                     severity="warning", expression=[name]))
            continue
        special = _special(code, modifier, values, name)
        if special is not None:
            clauses.append(special)
            out.applied.append((name, raw))
            continue
        param = known.get(code)
        if param is None or (modifier and modifier not in MODIFIERS.get(param.type, set())
                             and not (param.type == "reference" and modifier in param.targets)):
            what = f"unknown search parameter {code!r} for {rtype}" if param is None else \
                f"modifier :{modifier} is not supported on {code}"
            if strict:
                raise _bad(name, what)
            out.ignored.append(Issue("not-supported", f"{what}; it was ignored", severity="warning",
                                     expression=[name]))
            continue
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise _bad(name, ":missing takes true or false")
            clauses.append({_field(param.code): {"$exists": raw == "false"}})
        else:
            ors = [_one(param, name, modifier, v, base) for v in values]
            clauses.append(ors[0] if len(ors) == 1 else {"$or": ors})
        out.applied.append((name, raw))
    base_filter: dict = {"del": False}
    if clauses:
        base_filter["$and"] = clauses
    out.filter = base_filter
    return out
