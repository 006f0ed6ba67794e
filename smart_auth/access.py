"""The access decision object the FHIR API consults on every request.

``smart_auth`` builds one :class:`Access` per bearer token (``Access.from_token_claims(record)``) and hands it to
the interaction layer, which asks three questions and knows nothing of how tokens were issued:

- ``allows(interaction, type)``: may this be attempted at all? (no -> 403 with ``deny_reason``)
- ``compartments(interaction, type)``: confined to which patient compartments (``None``: not confined)?
- ``constraints(interaction, type)``: which v2 granular search constraints must results also match?

Rules applied (SMART App Launch 2.2, "Scopes and Launch Context"):

- "patient/ scopes ... allow access to specific data about a single patient": confined to the launch ``patient``;
  without a patient in context they allow nothing ("the EHR SHALL establish a patient in context").
- "user/ scopes allow access to specific data that a user can access": a Practitioner (or PractitionerRole) user is
  not confined here (role rules come later); any other user (Patient, RelatedPerson, Person, or no fhirUser at all,
  failing closed) is confined to the patients they may act for, ``proxied_patients`` (plus their own Patient record).
- "system/ scopes describe data that a client system is directly authorized to access": not confined.
- Scopes are a union: each covering scope is one alternative (a :class:`Rule`); the most permissive wins.

The compartment list is what the interaction layer intersects with a resource's ``comp`` field; for resource types
outside the Patient compartment (Practitioner, Organization, Medication, ...) the interaction layer decides how a
compartment applies. Decisions are cached per Access object; parsed scopes are cached per scope string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smart_auth.scopes import INTERACTION_LETTERS, Scope, ScopeKind, parse_scopes, scope_string

__all__ = ["Access", "Rule", "UNCONFINED_USER_TYPES"]

# fhirUser types whose user/ scopes are not confined to a patient list (role rules will come later).
UNCONFINED_USER_TYPES = frozenset({"Practitioner", "PractitionerRole"})

Constraint = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Rule:
    """One way a request is allowed, from one covering scope: inside one of ``compartments`` (None: anywhere) AND
    matching every ``(param, value)`` of ``constraint`` (empty: no constraint). Rules of a request are OR-ed."""

    scope: Scope
    compartments: tuple[str, ...] | None
    constraint: Constraint

    def dominates(self, other: Rule) -> bool:
        """Everything ``other`` allows, this rule allows too."""
        if self.compartments is not None and (
            other.compartments is None or not set(other.compartments) <= set(self.compartments)
        ):
            return False
        return set(self.constraint) <= set(other.constraint)


def _constraint_dict(constraint: Constraint) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in constraint:
        out.setdefault(name, []).append(value)
    return out


def _patient_ref(value: str) -> str:
    return value if value.startswith("Patient/") else f"Patient/{value}"


def _reference_type(reference: str | None) -> str | None:
    """``Practitioner`` for ``Practitioner/9`` or ``https://ehr/fhir/Practitioner/9`` ("MAY be absolute")."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _letters(interaction: str) -> str:
    try:
        return INTERACTION_LETTERS[interaction]
    except KeyError:
        known = ", ".join(sorted(INTERACTION_LETTERS))
        raise ValueError(f"unknown interaction {interaction!r}; expected one of: {known}") from None


@dataclass(frozen=True)
class Access:
    """Who is calling and what the granted scopes let them do. Immutable; safe to share between threads."""

    client_id: str
    scopes: tuple[Scope, ...]
    grant_type: str  # authorization_code, refresh_token, client_credentials
    user_id: str | None = None
    fhir_user: str | None = None  # e.g. "Patient/123", "Practitioner/9", "RelatedPerson/5"
    patient: str | None = None  # launch context patient id
    encounter: str | None = None
    proxied_patients: tuple[str, ...] = ()  # patients this user may act for, computed at token time
    unrestricted: bool = False  # authorization turned off (local development) or an admin/system grant
    _cache: dict[tuple[str, str], tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.scopes, str):
            object.__setattr__(self, "scopes", parse_scopes(self.scopes))
        elif not isinstance(self.scopes, tuple):
            object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "proxied_patients", tuple(_patient_ref(p) for p in self.proxied_patients))
        if self.patient and self.patient.startswith("Patient/"):
            object.__setattr__(self, "patient", self.patient.removeprefix("Patient/"))

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, client_id: str = "local") -> Access:
        """Authorization turned off (local development): everything is allowed, nothing is confined."""
        return cls(client_id=client_id, scopes=(), grant_type="none", unrestricted=True)

    @classmethod
    def from_token_claims(cls, claims: Mapping[str, Any]) -> Access:
        """Rebuild from the dict stored with the token (see :meth:`to_claims`); ``scope`` is the granted string."""
        scope = claims.get("scope") or ""
        scopes = parse_scopes(scope if isinstance(scope, str) else " ".join(scope))
        proxied: Iterable[str] = claims.get("proxied_patients") or ()
        return cls(
            client_id=str(claims["client_id"]),
            scopes=scopes,
            grant_type=str(claims.get("grant_type") or ""),
            user_id=claims.get("user_id"),
            fhir_user=claims.get("fhirUser", claims.get("fhir_user")),
            patient=claims.get("patient"),
            encounter=claims.get("encounter"),
            proxied_patients=tuple(proxied),
            unrestricted=bool(claims.get("unrestricted", False)),
        )

    def to_claims(self) -> dict[str, Any]:
        """A JSON-serializable dict for the token record; ``from_token_claims`` rebuilds an equal Access."""
        return {
            "client_id": self.client_id,
            "scope": scope_string(self.scopes),
            "grant_type": self.grant_type,
            "user_id": self.user_id,
            "fhirUser": self.fhir_user,
            "patient": self.patient,
            "encounter": self.encounter,
            "proxied_patients": list(self.proxied_patients),
            "unrestricted": self.unrestricted,
        }

    @property
    def scope(self) -> str:
        """The granted scopes as the canonical space-separated string (token response, introspection)."""
        return scope_string(self.scopes)

    def has_scope(self, name: str) -> bool:
        """A non-resource scope was granted, e.g. ``offline_access``, ``openid``, ``launch/patient``."""
        return any(s.kind is not ScopeKind.RESOURCE and s.name == name for s in self.scopes)

    # -- decisions ----------------------------------------------------------------------------------------------

    def _compartments_for(self, scope: Scope) -> tuple[str, ...] | None:
        """patient/ -> the launch patient; user/ -> None for a Practitioner, else the patients the user may act
        for; system/ -> None."""
        if scope.context == "system":
            return None
        if scope.context == "patient":
            return (f"Patient/{self.patient}",) if self.patient else ()
        user_type = _reference_type(self.fhir_user)
        if user_type in UNCONFINED_USER_TYPES:
            return None
        own = (self.fhir_user.rstrip("/").split("/")[-1],) if user_type == "Patient" and self.fhir_user else ()
        return tuple(dict.fromkeys((*self.proxied_patients, *(_patient_ref(p) for p in own))))

    def _rules(self, interaction: str, resource_type: str) -> tuple[Rule, ...]:
        key = (interaction, resource_type)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        letters = _letters(interaction)
        candidates = [
            Rule(scope, comps, scope.params)
            for scope in self.scopes
            if scope.permits(letters, resource_type)
            and (comps := self._compartments_for(scope)) != ()  # confined to no patient: allows nothing
        ]
        kept: list[Rule] = []
        for i, rule in enumerate(candidates):
            # drop a rule another one dominates (of two equal rules, keep the first)
            if not any(
                j != i and other.dominates(rule) and (j < i or not rule.dominates(other))
                for j, other in enumerate(candidates)
            ):
                kept.append(rule)
        rules = tuple(kept)
        self._cache[key] = rules
        return rules

    def rules(self, interaction: str, resource_type: str) -> list[Rule]:
        """The exact alternatives (OR) under which the request is allowed; empty when it is not. ``compartments``
        and ``constraints`` are projections of these; use this when scopes mix contexts and constraints."""
        if self.unrestricted:
            return [Rule(Scope(ScopeKind.RESOURCE, context="system", resource_type="*", permissions="cruds"), None, ())]
        return list(self._rules(interaction, resource_type))

    def allows(self, interaction: str, resource_type: str) -> bool:
        """Some granted scope of any context (patient/user/system) covers the type (or ``*``) and every letter of
        the interaction ("the resource server SHALL validate ... that the scope covers the requested resource").
        A patient/ scope without a patient in context, or a user/ scope of a user who may act for no patient,
        covers nothing."""
        if self.unrestricted:
            _letters(interaction)
            return True
        return bool(self._rules(interaction, resource_type))

    def _decision(
        self, interaction: str, resource_type: str
    ) -> tuple[tuple[str, ...] | None, tuple[Constraint, ...] | None]:
        """(compartments, constraints) such that "inside compartments AND matching one constraint" never allows
        more than the rules do. Exact when the rules share their compartments or their constraint; otherwise the
        most permissive compartments win and only the constraints of the rules reaching them are kept."""
        rules = self._rules(interaction, resource_type)
        if not rules:
            return (), ()
        if len({frozenset(r.constraint) for r in rules}) == 1:
            if any(r.compartments is None for r in rules):
                comps = None
            else:
                comps = tuple(dict.fromkeys(c for r in rules for c in r.compartments or ()))
            chosen: Iterable[Rule] = rules[:1]
        elif len({None if r.compartments is None else frozenset(r.compartments) for r in rules}) == 1:
            comps, chosen = rules[0].compartments, rules
        elif any(r.compartments is None for r in rules):
            comps, chosen = None, [r for r in rules if r.compartments is None]
        else:
            widest = max(rules, key=lambda r: len(r.compartments or ()))
            comps = widest.compartments
            chosen = [r for r in rules if set(r.compartments or ()) == set(comps or ())]
        if any(not r.constraint for r in chosen):
            return comps, None
        return comps, tuple(dict.fromkeys(r.constraint for r in chosen))

    def compartments(self, interaction: str, resource_type: str) -> list[str] | None:
        """The patient compartments (``"Patient/<id>"``) the caller is confined to for this access; None = not
        confined (system/ scopes, user/ scopes of a practitioner, unrestricted). "The most permissive applicable
        scope wins": a system/ scope beside a patient/ scope gives None; patient/ and user/ lists are united.
        An empty list means nothing is allowed (check ``allows`` first)."""
        if self.unrestricted:
            _letters(interaction)
            return None
        comps, _ = self._decision(interaction, resource_type)
        return None if comps is None else list(comps)

    def constraints(self, interaction: str, resource_type: str) -> list[dict[str, list[str]]] | None:
        """The v2 granular constraints that apply, as alternatives: OR over scopes, AND within one scope's
        parameters, e.g. ``[{"category": ["http://terminology.hl7.org/CodeSystem/observation-category|laboratory"]}]``.
        None when a covering scope has no constraint (no restriction). An empty list means nothing is allowed."""
        if self.unrestricted:
            _letters(interaction)
            return None
        _, constraints = self._decision(interaction, resource_type)
        return None if constraints is None else [_constraint_dict(c) for c in constraints]

    def deny_reason(self, interaction: str, resource_type: str) -> str | None:
        """Why ``allows`` says no, for the 403 OperationOutcome; None when allowed."""
        if self.allows(interaction, resource_type):
            return None
        letters = _letters(interaction)
        target = "all resource types" if resource_type == "*" else resource_type
        covering = [s for s in self.scopes if s.permits(letters, resource_type)]
        if not covering:
            wanted = "*" if resource_type == "*" else f"{resource_type} (or *)"
            return (
                f"The access token does not permit {interaction} of {target}: it needs a patient/, user/ or system/ "
                f"scope on {wanted} with the permission '{letters}'."
            )
        if any(s.context == "patient" for s in covering) and not self.patient:
            return f"The access token's patient/ scopes cover {interaction} of {target}, but no patient is in context."
        return (
            f"The access token's user/ scopes cover {interaction} of {target}, but the user may act for no patient."
        )
