"""Search queries: parsing `name[:modifier]=value[,value]` parameters and compiling them to MongoDB filters on `idx`.

Comma means OR within a parameter; a repeated parameter means AND. Filters read `idx` fields (or `_id`, `comp`)
only, so they can use indexes. Chained parameters (`subject:Patient.name=x`) and reverse chains
(`_has:Observation:patient:code=x`) run their inner search first and match on the ids found. Unknown parameters are
reported (lenient) or refused (strict).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fhirserver.errors import BadRequest, Issue
from fhirserver.search.extract import date_range, normalize_string, number_range
from fhirserver.search.params import SearchParam, params_for
from fhirserver.store.variants import Shapes

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Result parameters and others that are not filters: handled by the search interaction, not compiled here.
CONTROL = {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_format", "_pretty",
           "_contained", "_containedType", "_cursor", "_type", "_include:iterate", "_revinclude:iterate",
           "_include:recurse", "_revinclude:recurse"}
MODIFIERS = {
    "token": {"not", "text", "of-type", "missing"},
    "string": {"exact", "contains", "missing"},
    "reference": {"missing", "identifier"},
    "uri": {"below", "above", "missing"},
    "date": {"missing"}, "number": {"missing"}, "quantity": {"missing"}, "composite": {"missing"},
}
CHAIN_LIMIT = 1000  # ids an inner (chained or _has) search may produce before the search is refused as too costly


class Finder(Protocol):
    """What the compiler needs of the store for chains: raw documents matching a filter."""

    def find_raw(self, rtype: str, query: dict, projection: dict, limit: int = 0) -> list[dict]: ...

    def shapes(self, rtype: str) -> Shapes: ...


@dataclass
class Parsed:
    """A parsed search: the MongoDB filter, the parameters applied (for the self link) and what was ignored."""

    filter: dict
    applied: list[tuple[str, str]] = field(default_factory=list)
    control: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[Issue] = field(default_factory=list)


@dataclass(frozen=True)
class Cond:
    """A test on one index field (`idx.<code><suffix>`, or a component key inside a composite).

    With `fields`, `test` maps subfields of a range object (`lo`, `hi`, `v`, `s`, `c`, `u`) to their conditions,
    all of which must hold on the same object; `negate` means no value of the parameter may satisfy them.
    """

    suffix: str
    test: Any
    fields: bool = False
    negate: bool = False


def all_of(*filters: dict | None) -> dict:
    """The conjunction of MongoDB filters as one flat document where keys do not collide, `$and` only for the rest.

    FerretDB evaluates a flat filter far faster than the same conditions nested in `$and` (measured in bench/).
    """
    merged: dict = {}
    rest: list[dict] = []
    for f in filters:
        if not f:
            continue
        for key, value in f.items():
            if key == "$and":
                rest += value
            elif key in merged:
                rest.append({key: value})
            else:
                merged[key] = value
    if rest:
        merged["$and"] = rest
    return merged


def split_values(raw: str) -> list[str]:
    """Values separated by unescaped commas; `\\,` is a literal comma."""
    return [p.replace("\\,", ",") for p in re.split(r"(?<!\\),", raw)]


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on an unescaped separator (`|` or `$`) and unescape it."""
    return [p.replace("\\" + sep, sep) for p in re.split(r"(?<!\\)" + re.escape(sep), value)]


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] == "-"):
        return value[:2], value[2:]
    return "eq", value


def _bad(name: str, text: str) -> BadRequest:
    return BadRequest(f"search parameter {name}: {text}", expression=[name])


# -- values of each parameter type -> conditions ---------------------------------------------------------------
def _token(name: str, modifier: str | None, value: str) -> list[Cond]:
    if modifier == "text":
        return [Cond(":text", {"$regex": "^" + re.escape(normalize_string(value))})]
    if modifier == "of-type":
        if len(split_escaped(value, "|")) != 3:
            raise _bad(name, f":of-type wants system|code|value, not {value!r}")
        return [Cond(":of-type", value)]
    value = value.replace("\\|", "|")
    return [Cond("", {"$ne": value} if modifier == "not" else value)]


def _string(modifier: str | None, value: str) -> list[Cond]:
    if modifier == "exact":
        return [Cond(":exact", value)]
    text = re.escape(normalize_string(value))
    return [Cond("", {"$regex": text if modifier == "contains" else "^" + text})]


def _reference(param: SearchParam, modifier: str | None, value: str, base: str, shapes: Shapes | None) -> list[Cond]:
    if modifier == "identifier":
        return [Cond(":identifier", value.replace("\\|", "|"))]
    if base and value.startswith(base + "/"):
        value = value[len(base) + 1:]
    if ":" in value:
        return [Cond("", value)]
    targets = [modifier] if modifier else list(param.targets)
    if shapes is not None and not modifier:  # only the types this parameter's stored references point to
        present = shapes.targets.get(param.code, frozenset())
        targets = [t for t in targets if t in present] or targets[:1]
    refs = [value] if "/" in value else [f"{t}/{value}" for t in targets] or [value]
    # "A relative reference resolving to the same value as a specified absolute URL, or vice versa, qualifies as a
    # match" (R4 search 3.1.1.4.12): stored references may be written absolute on this server's base. When none of
    # this parameter's stored values is absolute, the relative forms suffice.
    absolute = shapes is None or param.code in shapes.absolute
    forms = refs + ([f"{base}/{r}" for r in refs] if base and absolute else [])
    return [Cond("", forms[0] if len(forms) == 1 else {"$in": forms})]


_OFFSET = re.compile(r"T.*[+-](\d\d):(\d\d)$")


def _date_clause(prefix: str, lo: datetime, hi: datetime) -> dict:
    """FHIR date prefixes over stored {lo, hi} ranges (both ends inclusive)."""
    if prefix == "ap":
        span = max(hi - lo, (hi - lo) * 0.1)
        return {"lo": {"$lte": hi + span}, "hi": {"$gte": lo - span}}
    return {
        "eq": {"lo": {"$gte": lo}, "hi": {"$lte": hi}},
        "gt": {"hi": {"$gt": hi}},
        "lt": {"lo": {"$lt": lo}},
        "ge": {"hi": {"$gte": lo}},
        "le": {"lo": {"$lte": hi}},
        "sa": {"lo": {"$gt": hi}},
        "eb": {"hi": {"$lt": lo}},
    }[prefix]


def _date(name: str, value: str) -> list[Cond]:
    prefix, text = _split_prefix(value)
    offset = _OFFSET.search(text)
    bounds = date_range(text) if not offset or int(offset.group(1)) * 60 + int(offset.group(2)) <= 14 * 60 else None
    if bounds is None:
        raise _bad(name, f"{value!r} is not a valid date, dateTime or instant (with an optional prefix)")
    lo, hi = bounds
    if prefix == "ne":
        return [Cond("", _date_clause("eq", lo, hi), fields=True, negate=True)]
    return [Cond("", _date_clause(prefix, lo, hi), fields=True)]


def _number_clause(prefix: str, v: float, lo: float, hi: float) -> dict:
    if prefix == "ap":
        return {"v": {"$gte": v - abs(v) * 0.1, "$lte": v + abs(v) * 0.1}}
    return {"eq": {"v": {"$gte": lo, "$lt": hi}}, "gt": {"v": {"$gt": v}}, "lt": {"v": {"$lt": v}},
            "ge": {"v": {"$gte": v}}, "le": {"v": {"$lte": v}}, "sa": {"v": {"$gt": v}},
            "eb": {"v": {"$lt": v}}}[prefix]


def _numeric(name: str, text: str) -> tuple[float, float, float]:
    try:
        found = number_range(Decimal(text))
    except InvalidOperation:
        found = None
    if found is None:
        raise _bad(name, f"{text!r} is not a number (with an optional prefix)")
    return found


def _number(name: str, value: str) -> list[Cond]:
    prefix, text = _split_prefix(value)
    v, lo, hi = _numeric(name, text)
    if prefix == "ne":
        return [Cond("", _number_clause("eq", v, lo, hi), fields=True, negate=True)]
    return [Cond("", _number_clause(prefix, v, lo, hi), fields=True)]


def _quantity(name: str, value: str) -> list[Cond]:
    """`[prefix]number|system|code`; a code without a system matches the code or the unit."""
    number, *rest = split_escaped(value, "|")
    prefix, text = _split_prefix(number)
    v, lo, hi = _numeric(name, text)
    match = _number_clause("eq" if prefix == "ne" else prefix, v, lo, hi)
    system, code = (rest + ["", ""])[:2]
    if system:
        match = {**match, "s": system}
    options = [{**match, "c": code}] if code and system else \
        [{**match, "c": code}, {**match, "u": code}] if code else [match]
    # "ne": no value may equal it in either reading of the code, so the negated options are ANDed by the caller.
    return [Cond("", m, fields=True, negate=prefix == "ne") for m in options]


def _uri(modifier: str | None, value: str) -> list[Cond]:
    if modifier == "below":
        return [Cond("", {"$regex": "^" + re.escape(value)})]
    if modifier == "above":
        prefixes = [value[:i] for i in range(len(value), 0, -1) if i == len(value) or value[i] == "/"]
        return [Cond("", {"$in": prefixes})]
    return [Cond("", value)]


def conditions(param_type: str, param: SearchParam | None, name: str, modifier: str | None, value: str,
               base: str, shapes: Shapes | None = None) -> list[Cond]:
    """The alternative conditions (OR) that one value of a parameter of `param_type` means; `shapes` (when known)
    narrows a reference to the forms stored values take."""
    if param_type == "token":
        return _token(name, modifier, value)
    if param_type == "string":
        return _string(modifier, value)
    if param_type == "reference" and param is not None:
        return _reference(param, modifier, value, base, shapes)
    if param_type == "date":
        return _date(name, value)
    if param_type == "number":
        return _number(name, value)
    if param_type == "quantity":
        return _quantity(name, value)
    if param_type in ("uri", "reference"):
        return _uri(modifier, value)
    raise _bad(name, f"{param_type} parameters cannot be searched this way")


def _either(clauses: list[dict]) -> dict:
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _composite(param: SearchParam, name: str, value: str, base: str, variants: dict[str, int]) -> dict:
    """`a$b` over the composite's component objects: every component must hold within one element."""
    parts = split_escaped(value, "$")
    if len(parts) != len(param.components):
        raise _bad(name, f"{param.code} takes {len(param.components)} values joined by '$', not {value!r}")
    options: list[dict] = [{}]
    for component, part in zip(param.components, parts, strict=True):
        alternatives = conditions(component.type, None, name, None, part, base)
        if any(c.negate for c in alternatives):
            raise _bad(name, "the ne prefix is not supported inside composite values")
        options = [{**o, **_component_tests(component.code + c.suffix, c)} for o in options for c in alternatives]
    # Each composite value is one object under its own key (code, code~1, ...): all components hold on it.
    return _either([{f"idx.{key}.{sub}": test for sub, test in o.items()}
                    for key in _keys(param.code, variants) for o in options])


def _component_tests(path: str, cond: Cond) -> dict:
    if cond.fields:
        return {f"{path}.{sub}": test for sub, test in cond.test.items()}
    return {path: cond.test}


def _keys(code: str, variants: dict[str, int]) -> list[str]:
    """The index keys of a range or composite parameter: code, code~1, ... as far as any document has them."""
    return [code] + [f"{code}~{n}" for n in range(1, variants.get(code, 1))]


def _range_clause(code: str, cond: Cond, variants: dict[str, int]) -> dict:
    """A range condition tested on each variant object of the parameter (one object per key)."""
    per_key = [{f"idx.{key}.{sub}": test for sub, test in cond.test.items()} for key in _keys(code, variants)]
    if cond.negate:
        return {"$nor": per_key, f"idx.{code}": {"$exists": True}}
    return _either(per_key)


# -- chains ----------------------------------------------------------------------------------------------------
def _ids(finder: Finder | None, rtype: str, query: dict, name: str) -> list[str]:
    if finder is None:
        raise _bad(name, "chained searches are not available here")
    docs = finder.find_raw(rtype, query, {"_id": 1}, limit=CHAIN_LIMIT + 1)
    if len(docs) > CHAIN_LIMIT:
        raise BadRequest(f"search parameter {name}: the chained search matches more than {CHAIN_LIMIT} "
                         "resources; narrow it", expression=[name])
    return [d["_id"] for d in docs]


def _chain(rtype: str, param: SearchParam, target: str | None, rest: str, raw: str, name: str,
           base: str, finder: Finder | None) -> dict:
    """`param[:Target].rest=raw`: references of `param` to the targets matching `rest=raw`."""
    targets = [target] if target else list(param.targets)
    refs: list[str] = []
    usable = 0
    for t in targets:
        if rest.split(":")[0].split(".")[0] not in params_for(t) and not rest.startswith("_"):
            continue
        usable += 1
        inner = parse(t, [(rest, raw)], base, strict=True, finder=finder)
        refs += [f"{t}/{i}" for i in _ids(finder, t, inner.filter, name)]
    if not usable:
        raise _bad(name, f"no target type of {param.code} has a parameter {rest.split('.')[0]!r}")
    return {f"idx.{param.code}": {"$in": refs}}


def _has(rtype: str, name: str, raw: str, base: str, finder: Finder | None) -> dict:
    """`_has:Type:param:rest=raw`: resources referenced through `param` by resources of Type matching rest=raw."""
    pieces = name.split(":", 3)
    if len(pieces) != 4 or not pieces[3]:
        raise _bad(name, "_has takes the form _has:Type:referenceParam:searchParam=value")
    _, other, link, rest = pieces
    link_param = params_for(other).get(link)
    if link_param is None or link_param.type != "reference":
        raise _bad(name, f"{other} has no reference parameter {link!r}")
    inner = parse(other, [(rest, raw)], base, strict=True, finder=finder)
    if finder is None:
        raise _bad(name, "_has is not available here")
    docs = finder.find_raw(other, inner.filter, {f"idx.{link}": 1}, limit=CHAIN_LIMIT + 1)
    if len(docs) > CHAIN_LIMIT:
        raise BadRequest(f"search parameter {name}: matches more than {CHAIN_LIMIT} {other} resources; narrow it",
                         expression=[name])
    prefix = rtype + "/"
    ids = sorted({ref[len(prefix):] for d in docs for ref in d.get("idx", {}).get(link, [])
                  if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix):]})
    return {"_id": {"$in": ids}}


# -- one parameter ---------------------------------------------------------------------------------------------
def _clause(rtype: str, name: str, raw: str, base: str, finder: Finder | None,
            known: dict[str, SearchParam], shapes: Shapes | None) -> dict | None:
    """The filter of one `name=raw` pair, or None when the parameter is unknown to `rtype`."""
    if name.startswith("_has:"):
        return _has(rtype, name, raw, base, finder)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    modifier = modifier or None
    if code == "_id" and not dot:
        values = split_values(raw)
        return {"_id": {"$in": values}} if len(values) > 1 else {"_id": values[0]}
    param = known.get(code)
    if param is None:
        return None
    if dot:
        if param.type != "reference":
            raise _bad(name, f"{code} is not a reference parameter, so it cannot be chained")
        if modifier and modifier not in param.targets:
            raise _bad(name, f"{modifier} is not a target type of {code}")
        return _chain(rtype, param, modifier, rest, raw, name, base, finder)
    if modifier and modifier not in MODIFIERS.get(param.type, set()) and not (
            param.type == "reference" and modifier in param.targets):
        raise _Unsupported(f"modifier :{modifier} is not supported on {code}")
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(name, ":missing takes true or false")
        return {f"idx.{code}": {"$exists": raw == "false"}}
    variants = shapes.counts if shapes is not None else {}
    ors: list[dict] = []
    for value in split_values(raw):
        if param.type == "composite":
            ors.append(_composite(param, name, value, base, variants))
            continue
        conds = conditions(param.type, param, name, modifier, value, base, shapes)
        clauses = [_range_clause(code, c, variants) if c.fields else {f"idx.{code}{c.suffix}": c.test}
                   for c in conds]
        negated = any(c.negate for c in conds)
        ors.append({"$and": clauses} if negated and len(clauses) > 1 else _either(clauses))
    return _either(ors)


class _Unsupported(Exception):
    """A known parameter used with a modifier this server does not support."""


def parse(rtype: str, query: str | list[tuple[str, str]], base: str = "", strict: bool = False,
          finder: Finder | None = None) -> Parsed:
    """Parse and compile a search on `rtype`; unknown parameters are 400 when `strict`, else reported."""
    pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query
    known = params_for(rtype)
    shapes = finder.shapes(rtype) if finder is not None else None
    clauses: list[dict] = []
    out = Parsed(filter={})
    for name, raw in pairs:
        if name in CONTROL or name.split(":")[0] in ("_include", "_revinclude"):
            out.control.setdefault(name, []).append(raw)
            continue
        if not raw:
            out.ignored.append(Issue("invalid", f"search parameter {name} has no value and was ignored",
                                     severity="warning", expression=[name]))
            continue
        try:
            clause = _clause(rtype, name, raw, base, finder, known, shapes)
            problem = None if clause is not None else f"unknown search parameter {name.split(':')[0]!r} for {rtype}"
        except _Unsupported as exc:
            clause, problem = None, str(exc)
        if clause is None:
            if strict:
                raise _bad(name, str(problem))
            out.ignored.append(Issue("not-supported", f"{problem}; it was ignored", severity="warning",
                                     expression=[name]))
            continue
        clauses.append(clause)
        out.applied.append((name, raw))
    out.filter = all_of({"del": False}, *clauses)
    return out
