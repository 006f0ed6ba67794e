"""_include and _revinclude (FHIR R4 search.html#include): parsing the directives and fetching what they add.

- ``_include=[SourceType]:[param](:[TargetType])``: for the resources of SourceType, add the resources that their
  reference parameter ``param`` points to (only those of TargetType when given). ``_include=*`` and
  ``SourceType:*`` mean every reference parameter of the source type.
- ``_revinclude=[SourceType]:[param](:[TargetType])``: add the resources of SourceType whose ``param`` references one
  of the resources (only the ones of TargetType when given).
- ``:iterate`` (R4 also names it ``:recurse``): the directive also applies to the resources included so far, round
  after round. Without it a directive applies to the matches only, so an ``_include`` whose SourceType is not the
  searched type adds nothing.

Parameter values reach ``parse_includes`` as strings; an iterating one carries its modifier as a prefix
(``iterate:Observation:subject``), or use ``includes_from_query`` with the query's ``(name, value)`` pairs.

Only local relative references (``Type/id``, as ``idx`` stores them) are followed; absolute URLs, canonicals and
``urn:`` references are not. The store has no ``$lookup`` (FerretDB), so every round is a few batched queries:
one ``find_raw`` per source type for the reference fields of the resources at hand, one ``find`` per target type by
``_id``, and one ``find`` per revinclude source type on ``idx.<code>``; never one query per resource.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from conformance.definitions import resource_types
from fhirserver.errors import BadRequest
from fhirserver.search.params import params_for
from fhirserver.search.query import all_of
from fhirserver.store.resources import Stored

if TYPE_CHECKING:
    from fhirserver.store.database import Store

MAX_ROUNDS = 4  # the first pass over the matches plus at most three :iterate rounds
ITERATE_MODIFIERS = ("iterate", "recurse")  # `recurse` is R4's older name for `iterate`
INCLUDE, REVINCLUDE = "_include", "_revinclude"

# A local relative reference as `idx` holds it: `Type/id` (FHIR ids are [A-Za-z0-9-.]{1,64}).
_LOCAL_REFERENCE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")

# restrict(type) -> an extra filter on the included resources of that type ({} = none), or None: the type is off limits.
Restrict = Callable[[str], dict | None]


@cache
def _known_types() -> frozenset[str]:
    """The concrete R4 resource types."""
    return frozenset(resource_types())


@cache
def _reference_codes(rtype: str) -> tuple[str, ...]:
    """Codes of the reference parameters of ``rtype``, sorted."""
    return tuple(code for code, p in params_for(rtype).items() if p.type == "reference")


def _may_target(rtype: str, code: str, target: str) -> bool:
    """Whether reference parameter ``code`` of ``rtype`` may point at ``target`` (no declared targets: any)."""
    targets = params_for(rtype)[code].targets
    return not targets or target in targets


@dataclass(frozen=True, slots=True)
class Include:
    """One ``_include`` or ``_revinclude`` directive, checked against the parameter registry."""

    reverse: bool  # _revinclude
    source: str | None  # the SourceType; None only for `_include:iterate=*` (any type)
    param: str  # a reference parameter code of the source type, or `*`
    target: str | None  # TargetType restriction
    iterate: bool
    value: str  # the canonical parameter value, e.g. `Encounter:subject:Patient` or `*`

    @property
    def name(self) -> str:
        """The parameter name for the self link: ``_include``, ``_revinclude:iterate``, ..."""
        base = REVINCLUDE if self.reverse else INCLUDE
        return f"{base}:iterate" if self.iterate else base

    def codes_for(self, rtype: str) -> tuple[str, ...]:
        """The reference parameter codes of ``rtype`` (a source type) this directive follows."""
        if self.param != "*":
            return (self.param,)
        codes = _reference_codes(rtype)
        return tuple(c for c in codes if _may_target(rtype, c, self.target)) if self.target else codes


@dataclass(frozen=True, slots=True)
class IncludePlan:
    """The ``_include``/``_revinclude`` directives of a search on ``rtype``, deduplicated, in request order."""

    rtype: str
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.includes or self.revincludes)

    @property
    def directives(self) -> tuple[Include, ...]:
        """All directives, includes first."""
        return self.includes + self.revincludes

    def forward_codes(self, rtype: str) -> tuple[str, ...]:
        """The reference codes the first round of ``_include`` reads from matches of ``rtype`` (read along with
        them by the search, so that the includes need no second read)."""
        return tuple(sorted({c for d in self.includes if d.source in (rtype, None) for c in d.codes_for(rtype)}))

    def self_link_params(self) -> list[tuple[str, str]]:
        """Canonical ``(name, value)`` pairs for the Bundle's self link (``:recurse`` written as ``:iterate``)."""
        return [(d.name, d.value) for d in self.directives]


# ---------------------------------------------------------------------------
# Parsing


def _bad(name: str, entry: str, text: str) -> BadRequest:
    return BadRequest(f"{name}={entry!r}: {text}", expression=[name])


def _parse_one(rtype: str, name: str, entry: str) -> Include:
    """One directive; ``entry`` is the parameter value, an iterating one prefixed with ``iterate:``/``recurse:``."""
    reverse = name == REVINCLUDE
    value = entry.strip()
    iterate = False
    head, sep, rest = value.partition(":")
    if sep and head in ITERATE_MODIFIERS:
        iterate, value = True, rest.strip()
    if not value:
        raise _bad(name, entry, "the parameter has no value")
    if value == "*":
        if reverse:
            raise _bad(name, entry, "a reverse include names its source type: [SourceType]:[param] or [SourceType]:*")
        # `_include=*`: every reference parameter of the matches; with :iterate, of every included resource too.
        return Include(False, None if iterate else rtype, "*", None, iterate, "*")
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise _bad(name, entry, "expected [SourceType]:[param] or [SourceType]:[param]:[TargetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in _known_types():
        raise _bad(name, entry, f"{source!r} is not a resource type")
    if target is not None and target not in _known_types():
        raise _bad(name, entry, f"{target!r} is not a resource type")
    if code == "*":
        if target is not None and not any(_may_target(source, c, target) for c in _reference_codes(source)):
            raise _bad(name, entry, f"no reference parameter of {source} points to {target}")
    else:
        param = params_for(source).get(code)
        if param is None:
            raise _bad(name, entry, f"{code!r} is not a search parameter of {source}")
        if param.type != "reference":
            raise _bad(name, entry, f"{source}:{code} is a {param.type} parameter, not a reference")
        if target is not None and not _may_target(source, code, target):
            raise _bad(name, entry, f"{source}:{code} does not point to {target}")
    return Include(reverse, source, code, target, iterate, value)


def _unique(directives: Iterable[Include]) -> tuple[Include, ...]:
    """Directives without repeats, first occurrence kept."""
    return tuple(dict.fromkeys(directives))


def parse_includes(rtype: str, include: list[str], revinclude: list[str]) -> IncludePlan:
    """The plan for the ``_include`` and ``_revinclude`` values of a search on ``rtype``; 400 on a bad one.

    An iterating value carries its modifier as a prefix: ``iterate:Observation:subject`` (``recurse:`` too).
    """
    return IncludePlan(
        rtype,
        _unique(_parse_one(rtype, INCLUDE, v) for v in include),
        _unique(_parse_one(rtype, REVINCLUDE, v) for v in revinclude),
    )


def includes_from_query(rtype: str, pairs: Iterable[tuple[str, str]]) -> IncludePlan:
    """The plan from raw query pairs (``_include``, ``_include:iterate``, ``_revinclude:recurse``, others ignored)."""
    found: dict[str, list[str]] = {INCLUDE: [], REVINCLUDE: []}
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if base not in found:
            continue
        if modifier and modifier not in ITERATE_MODIFIERS:
            raise _bad(base, value, f"unknown modifier :{modifier} (only :iterate)")
        found[base].append(f"{modifier}:{value}" if modifier else value)
    return parse_includes(rtype, found[INCLUDE], found[REVINCLUDE])


# ---------------------------------------------------------------------------
# Resolving


class _Collector:
    """The resources seen so far (matches and included), the included ones, and the room left."""

    def __init__(self, store: Store, matches: list[Stored], max_results: int, restrict: Restrict | None) -> None:
        self.reader = store.reader
        self.seen: dict[str, set[str]] = defaultdict(set)
        for m in matches:
            self.seen[m.type].add(m.id)
        self.added: list[Stored] = []
        self.max_results = max_results
        self.restrict = restrict

    @property
    def room(self) -> int:
        return self.max_results - len(self.added)

    def _scoped(self, rtype: str, query: dict) -> dict | None:
        """``query`` narrowed by the access restriction for ``rtype``; None when that type may not be included."""
        if self.restrict is None:
            return query
        extra = self.restrict(rtype)
        if extra is None:
            return None
        return all_of(query, extra) if extra else query

    def fetch(self, rtype: str, query: dict) -> list[Stored]:
        """One ``find``; records and returns the resources not seen before."""
        scoped = self._scoped(rtype, query)
        if scoped is None or self.room <= 0:
            return []
        fresh = [s for s in self.reader.find(rtype, scoped, self.room) if s.id not in self.seen[rtype]]
        for s in fresh:
            self.seen[rtype].add(s.id)
        self.added.extend(fresh)
        return fresh


def _by_type(resources: Iterable[Stored]) -> dict[str, list[str]]:
    """Type -> sorted ids."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in resources:
        out[r.type].add(r.id)
    return {t: sorted(ids) for t, ids in sorted(out.items())}


def _reference_fields(col: _Collector, stype: str, frontier: list[Stored], codes: set[str]) -> list[dict]:
    """The index fields `codes` of the frontier's resources of `stype`: those read along with them, the others read
    by ``_id``."""
    known = [s.idx for s in frontier if s.type == stype and s.idx is not None and codes <= s.idx.keys()]
    unread = sorted({s.id for s in frontier if s.type == stype and (s.idx is None or not codes <= s.idx.keys())})
    if unread:
        projection = {f"idx.{code}": 1 for code in sorted(codes)}
        known += [doc.get("idx") or {} for doc in
                  col.reader.find_raw(stype, {"_id": {"$in": unread}, "del": False}, projection)]
    return known


def _forward(col: _Collector, directives: list[Include], frontier: list[Stored]) -> list[Stored]:
    """Apply ``_include`` directives to the frontier: its reference fields, then the targets by ``_id``."""
    wanted: dict[str, set[str]] = defaultdict(set)  # target type -> ids
    for stype in sorted({s.type for s in frontier}):
        follow = [(code, d.target) for d in directives if d.source in (stype, None) for code in d.codes_for(stype)]
        if not follow:
            continue
        for idx in _reference_fields(col, stype, frontier, {code for code, _ in follow}):
            for code, target in follow:
                for ref in idx.get(code, ()):
                    m = _LOCAL_REFERENCE.fullmatch(ref) if isinstance(ref, str) else None
                    if m and m[1] in _known_types() and target in (None, m[1]):
                        wanted[m[1]].add(m[2])
    found: list[Stored] = []
    for ttype in sorted(wanted):
        ids = sorted(wanted[ttype] - col.seen[ttype])
        if ids:
            found += col.fetch(ttype, {"_id": {"$in": ids}, "del": False})
    return found


def _reverse(col: _Collector, directives: list[Include], frontier: dict[str, list[str]]) -> list[Stored]:
    """Apply ``_revinclude`` directives: per source type one query on the references to the frontier."""
    clauses: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # source -> code -> refs
    for d in directives:
        if d.source is None:  # parsing refuses `_revinclude=*`; a reverse include always names its source type
            continue
        for ttype, ids in frontier.items():
            if d.target not in (None, ttype):
                continue
            for code in d.codes_for(d.source):
                if _may_target(d.source, code, ttype):
                    clauses[d.source][code].update(f"{ttype}/{i}" for i in ids)
    found: list[Stored] = []
    for stype in sorted(clauses):
        ors = [{f"idx.{code}": {"$in": sorted(refs)}} for code, refs in sorted(clauses[stype].items())]
        query: dict = {"del": False, **(ors[0] if len(ors) == 1 else {"$or": ors})}
        if col.seen[stype]:
            query["_id"] = {"$nin": sorted(col.seen[stype])}
        found += col.fetch(stype, query)
    return found


def resolve_includes(store: Store, plan: IncludePlan, matches: list[Stored], max_results: int = 1000,
                     restrict: Restrict | None = None) -> list[Stored]:
    """The resources the plan adds to ``matches``: not among the matches, no duplicates, sorted by type then id.

    The first round applies every directive to the matches; each further round (up to ``MAX_ROUNDS`` in all)
    applies the ``:iterate`` directives to the resources the previous round added. At most ``max_results``
    resources are returned (exactly that many means the list may have been cut). ``restrict``, when given, narrows
    each included type with an extra filter (an access scope) or, returning None, leaves the type out.
    """
    if not plan or not matches or max_results <= 0:
        return []
    col = _Collector(store, matches, max_results, restrict)
    frontier: list[Stored] = list(matches)
    iterating = [d for d in plan.directives if d.iterate]
    for round_no in range(MAX_ROUNDS):
        directives = list(plan.directives) if round_no == 0 else iterating
        if not directives or not frontier or col.room <= 0:
            break
        by_type = _by_type(frontier)
        added = _forward(col, [d for d in directives if not d.reverse], frontier)
        frontier = added + _reverse(col, [d for d in directives if d.reverse], by_type)
    return sorted(col.added, key=lambda s: (s.type, s.id))
