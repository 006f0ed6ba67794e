"""The access rules of the caller's token, applied where data leaves or enters: which interactions are allowed on
which types, and which resources are visible (the patient compartments and granular constraints of the scopes).

Every interaction takes a Guard; `OPEN` is the guard of authorization turned off. Refusals: a type or interaction
the scopes do not cover is 403; a resource outside what the token may see is 404, so its existence does not leak.
"""

from __future__ import annotations

from functools import cache

from conformance.definitions import compartment_params
from fhirserver.errors import Forbidden, NotFound
from fhirserver.search.query import all_of, parse
from fhirserver.store.commit import Version
from fhirserver.store.database import Store
from fhirserver.store.variants import Shapes
from smart_auth.access import Access

NOTHING: dict = {"_id": {"$in": []}}


@cache
def in_patient_compartment(rtype: str) -> bool:
    """Types whose resources belong to patients (the Patient CompartmentDefinition), and Patient itself."""
    return rtype == "Patient" or bool(compartment_params("Patient", rtype))


class Guard:
    """One request's access decisions over one store."""

    def __init__(self, access: Access) -> None:
        self.access = access

    @property
    def open(self) -> bool:
        return self.access.unrestricted

    def require(self, interaction: str, rtype: str) -> None:
        """403 unless a granted scope covers `interaction` on `rtype`."""
        if not self.open and not self.access.allows(interaction, rtype):
            raise Forbidden(self.access.deny_reason(interaction, rtype) or f"{interaction} of {rtype} is not allowed")

    def allows(self, interaction: str, rtype: str) -> bool:
        return self.open or self.access.allows(interaction, rtype)

    def visibility(self, interaction: str, rtype: str) -> dict | None:
        """The filter a resource of `rtype` must match to be reached by `interaction`; None = no restriction.

        Alternatives per covering scope (OR): inside one of its patient compartments (for compartment types) AND
        matching its granular constraint (e.g. `category=…|laboratory`). Call `require` first.
        """
        if self.open:
            return None
        alternatives = []
        for rule in self.access.rules(interaction, rtype):
            clauses: list[dict] = []
            if rule.compartments is not None and in_patient_compartment(rtype):
                clauses.append({"comp": {"$in": list(rule.compartments)}})
            if rule.constraint:
                constraint = dict(parse(rtype, list(rule.constraint), strict=True).filter)
                constraint.pop("del", None)
                clauses.append(constraint)
            if not clauses:
                return None  # this scope reaches every resource of the type
            alternatives.append(all_of(*clauses))
        if not alternatives:
            return NOTHING
        return alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}

    def reachable(self, interaction: str, rtype: str) -> dict | None:
        """`visibility`, or a filter matching nothing when the interaction is not allowed on the type at all."""
        if not self.allows(interaction, rtype):
            return NOTHING
        return self.visibility(interaction, rtype)

    def restrict(self, interaction: str, rtype: str, query: dict) -> dict:
        """`query` narrowed to what the token may reach (403 when the interaction is not allowed at all)."""
        self.require(interaction, rtype)
        return all_of(query, self.visibility(interaction, rtype))

    def can_reach(self, store: Store, interaction: str, rtype: str, rid: str) -> bool:
        """Whether the current resource `rtype/rid` is inside what the token may reach."""
        extra = self.visibility(interaction, rtype)
        if extra is None:
            return True
        return bool(store.reader.find_raw(rtype, all_of({"_id": rid}, extra), {"_id": 1}, 1))

    def check_existing(self, store: Store, interaction: str, rtype: str, rid: str) -> None:
        """404 when the resource exists but lies outside what the token may reach (403 for a denied type)."""
        self.require(interaction, rtype)
        if not self.can_reach(store, interaction, rtype, rid):
            raise NotFound(f"{rtype}/{rid} is not known")

    def check_new(self, interaction: str, version: Version) -> None:
        """A version about to be written must lie inside what the token may write (403 otherwise)."""
        self.require(interaction, version.type)
        if self.open or version.deleted:
            return
        for rule in self.access.rules(interaction, version.type):
            inside = rule.compartments is None or not in_patient_compartment(version.type) or \
                bool(set(rule.compartments) & set(version.comp))
            if inside and all(value in version.idx.get(param, ()) for param, value in rule.constraint):
                return
        raise Forbidden(f"the token may not {interaction} this {version.type}: it lies outside the patient "
                        "compartments or categories its scopes grant")


class GuardedFinder:
    """The store's finder for the inner searches of chains and `_has`, limited to what the token may search."""

    def __init__(self, store: Store, guard: Guard) -> None:
        self.reader = store.reader
        self.guard = guard

    def find_raw(self, rtype: str, query: dict, projection: dict, limit: int = 0) -> list[dict]:
        return self.reader.find_raw(rtype, all_of(query, self.guard.reachable("search", rtype)), projection, limit)

    def shapes(self, rtype: str) -> Shapes:
        return self.reader.shapes(rtype)


OPEN = Guard(Access.open())
