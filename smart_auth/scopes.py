"""SMART App Launch scopes: parsing, canonical strings, and what may be granted.

The room for SMART App Launch 2.2 "Scopes and Launch Context" (hl7.org/fhir/smart-app-launch/
scopes-and-launch-context.html). Pure logic: no database, no HTTP, no FHIR routes.

Clinical scope grammar (v2): ``(patient|user|system)/(ResourceType|*).[c][r][u][d][s][?param=value(&param=value)*]``.
v1 suffixes are read as v2 letters: ``.read`` => ``.rs``, ``.write`` => ``.cud``, ``.*`` => ``.cruds``.

Decisions taken here (project rules where the spec leaves room):

- Interactions per letter, quoted from the spec: ``c`` create; ``r`` read, vread and *instance* history; ``u`` update
  (also update-as-create) and patch; ``d`` delete; ``s`` type search, *type* history, system search and *system*
  history. So ``history-instance`` needs ``r`` while ``history-type`` and ``history-system`` need ``s``.
- ``operation`` (a ``$operation`` with no more precise mapping) needs ``r`` and ``s`` in one scope, the v1 ``.read``:
  it returns data of the type the way read and search do. Operations that create, update or search must (also) ask
  for those interactions (``$book`` -> update/create, ``$find`` -> search, ``$submit`` -> create).
- "Scope requests with undefined or out of order interactions MAY be ignored, replaced with server default scopes, or
  rejected": a string that starts with ``patient/``, ``user/`` or ``system/`` but breaks the grammar (``.dus``,
  ``.xyz``, ``.readrs``, ``.read?category=…``, a lower-case or spaced type) raises :class:`ScopeError`; the
  authorize endpoint answers ``invalid_scope`` (or uses ``parse_scopes(..., strict=False)`` to drop them).
- v1 and v2 scopes may be mixed in one request; they mean the same letters. A v1 scope that is granted unchanged
  keeps its v1 spelling ("SHOULD return v1 scopes when v1 scopes are requested and granted").
- Search constraints: ``&`` separates parameters (AND, as in a FHIR search), a repeated parameter is kept as several
  values (AND), a comma inside one value is left to the search layer (OR). Values are percent-decoded (``%7C`` ->
  ``|``); ``+`` stays a literal plus, since scopes are not form-encoded. Modifiers and chains (``code:in``,
  ``patient.birthdate``) parse, but the spec calls them experimental.
- Anything else (``__custom``, ``http://example.com/scope``, the ``http://smarthealthit.org/fhir/scopes/`` URI form)
  is kept as an "other" scope: "a server may ignore them"; it is granted only if allowed verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache
from urllib.parse import quote, unquote

__all__ = [
    "CONTEXTS",
    "IDENTITY_SCOPES",
    "INTERACTION_LETTERS",
    "LETTERS",
    "REFRESH_SCOPES",
    "Scope",
    "ScopeError",
    "ScopeKind",
    "covers_all",
    "grant",
    "narrow",
    "parse_scope",
    "parse_scopes",
    "scope_string",
]

CONTEXTS = ("patient", "user", "system")
LETTERS = "cruds"
# v1 `.read` => v2 `.rs`, v1 `.write` => v2 `.cud`, v1 `.*` => v2 `.cruds`
V1_SUFFIXES: dict[str, str] = {"read": "rs", "write": "cud", "*": "cruds"}
_V1_BY_LETTERS = {letters: word for word, letters in V1_SUFFIXES.items()}

IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile"})
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})

# The letters an interaction needs (see the module docstring for history and operations).
INTERACTION_LETTERS: dict[str, str] = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search": "s",
    "history-type": "s",
    "history-system": "s",
    "operation": "rs",
}

_TYPE = re.compile(r"[A-Z][A-Za-z]*")
_V2_LETTERS = re.compile(r"c?r?u?d?s?")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]*")
# `launch/<lowercase type>`, optionally with a query such as `?role=<uri>`
_LAUNCH_CONTEXT = re.compile(r"launch/([a-z]+)(\?\S+)?")
# OAuth scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); also keep `&` and `%` escaped inside a value.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\%&')


class ScopeError(ValueError):
    """A scope that names a clinical context (``patient/``, ``user/``, ``system/``) but breaks the grammar."""

    def __init__(self, scope: str, reason: str) -> None:
        super().__init__(f"invalid scope {scope!r}: {reason}")
        self.scope = scope
        self.reason = reason


class ScopeKind(StrEnum):
    """What a scope asks for."""

    RESOURCE = "resource"  # patient/Observation.rs
    IDENTITY = "identity"  # openid, fhirUser, profile
    LAUNCH = "launch"  # launch, launch/patient, launch/encounter, launch/<type>
    REFRESH = "refresh"  # offline_access, online_access
    OTHER = "other"  # anything else: kept, granted only verbatim


@dataclass(frozen=True, eq=False, repr=False)
class Scope:
    """One parsed scope. Equality is by meaning: ``.read`` equals ``.rs``, parameter order does not matter."""

    kind: ScopeKind
    name: str = ""  # the scope itself for non-resource scopes
    context: str | None = None  # patient | user | system
    resource_type: str | None = None  # a type name or "*"
    permissions: str = ""  # letters of "cruds", in that order
    params: tuple[tuple[str, str], ...] = ()  # decoded (name, value) pairs, in the order given
    v1: bool = False  # spelled with a v1 suffix (read, write, *)

    @cached_property
    def _key(self) -> tuple[object, ...]:
        return (self.kind, self.name, self.context, self.resource_type, self.permissions, frozenset(self.params))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"Scope({self.to_string()!r})"

    @property
    def is_resource(self) -> bool:
        """A clinical data scope (``patient/``, ``user/`` or ``system/``)."""
        return self.kind is ScopeKind.RESOURCE

    @property
    def launch_context(self) -> str | None:
        """``patient`` for ``launch/patient``, ``encounter`` for ``launch/encounter``; None for plain ``launch``."""
        match = _LAUNCH_CONTEXT.fullmatch(self.name) if self.kind is ScopeKind.LAUNCH else None
        return match.group(1) if match else None

    @property
    def constraint(self) -> dict[str, list[str]] | None:
        """The v2 search constraint as ``{param: [values]}`` (AND over everything), None when there is none."""
        if not self.params:
            return None
        out: dict[str, list[str]] = {}
        for name, value in self.params:
            out.setdefault(name, []).append(value)
        return out

    def to_string(self) -> str:
        """Canonical form: v1 spelling kept when the letters still say exactly read/write/*, values re-encoded
        only where a scope token must be (space, ``"``, ``\\``, ``%``, ``&``, non-ASCII)."""
        if self.kind is not ScopeKind.RESOURCE:
            return self.name
        suffix = self.permissions
        if self.v1 and not self.params and suffix in _V1_BY_LETTERS:
            suffix = _V1_BY_LETTERS[suffix]
        text = f"{self.context}/{self.resource_type}.{suffix}"
        if self.params:
            text += "?" + "&".join(f"{quote(n, safe=_SAFE)}={quote(v, safe=_SAFE)}" for n, v in self.params)
        return text

    def permits(self, letters: str, resource_type: str) -> bool:
        """This resource scope covers every letter for the type; ``*`` covers every type "now and in the future",
        and a request for all types (``"*"``) is covered only by a wildcard scope."""
        if self.kind is not ScopeKind.RESOURCE:
            return False
        if self.resource_type != "*" and self.resource_type != resource_type:
            return False
        return all(letter in self.permissions for letter in letters)

    def covers(self, other: Scope) -> bool:
        """Everything ``other`` allows, this scope allows: same context, same type or ``*``, at least the same
        letters, and no constraint that ``other`` lacks (fewer AND-ed parameters is broader)."""
        if self.kind is not ScopeKind.RESOURCE or other.kind is not ScopeKind.RESOURCE:
            return self == other
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.permissions) <= set(self.permissions)
            and set(self.params) <= set(other.params)
        )


def _decode(scope: str, text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError as exc:
        raise ScopeError(scope, f"{text!r} is not valid percent-encoded UTF-8") from exc


def _parse_params(scope: str, query: str) -> tuple[tuple[str, str], ...]:
    """``?`` followed by a series of ``param=value`` items separated by ``&``."""
    if not query:
        raise ScopeError(scope, "'?' must be followed by param=value")
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        raw_name, eq, raw_value = item.partition("=")
        if not eq or not raw_name or not raw_value:
            raise ScopeError(scope, f"constraint {item!r} is not param=value")
        name, value = _decode(scope, raw_name), _decode(scope, raw_value)
        if not _PARAM_NAME.fullmatch(name):
            raise ScopeError(scope, f"{name!r} is not a search parameter name")
        pairs.append((name, value))
    return tuple(pairs)


def _parse_resource_scope(text: str) -> Scope:
    """``(patient|user|system)/(FHIR Resource Type|*).(c?r?u?d?s? | read | write | *)[?param=value&…]``."""
    context, _, rest = text.partition("/")
    body, question, query = rest.partition("?")
    resource_type, dot, suffix = body.partition(".")
    if not dot:
        raise ScopeError(text, "expected <context>/<Type>.<permissions>")
    if resource_type != "*" and not _TYPE.fullmatch(resource_type):
        raise ScopeError(text, f"{resource_type!r} is not a resource type or '*'")
    if suffix in V1_SUFFIXES:
        if question:
            raise ScopeError(text, f"the v1 suffix '.{suffix}' takes no search constraint; use v2 letters (cruds)")
        return Scope(ScopeKind.RESOURCE, context=context, resource_type=resource_type,
                     permissions=V1_SUFFIXES[suffix], v1=True)
    if not suffix:
        raise ScopeError(text, "no permissions after '.'")
    if not _V2_LETTERS.fullmatch(suffix):
        if suffix.startswith(("read", "write")) or "*" in suffix or suffix.endswith(("read", "write")):
            raise ScopeError(text, f"'.{suffix}' mixes v1 (read, write, *) and v2 (cruds) permissions")
        raise ScopeError(text, f"'.{suffix}' is not an in-order subset of 'cruds' nor read, write or *")
    params = _parse_params(text, query) if question else ()
    return Scope(ScopeKind.RESOURCE, context=context, resource_type=resource_type, permissions=suffix, params=params)


@lru_cache(maxsize=4096)
def parse_scope(text: str) -> Scope:
    """Parse one scope token. Never raises on unknown strings; raises :class:`ScopeError` on a malformed
    clinical scope (anything starting ``patient/``, ``user/`` or ``system/``)."""
    if not text or any(ch.isspace() for ch in text):
        raise ScopeError(text, "a scope is one non-empty token without spaces")
    head, slash, _ = text.partition("/")
    if slash and head in CONTEXTS:
        return _parse_resource_scope(text)
    if text in IDENTITY_SCOPES:
        return Scope(ScopeKind.IDENTITY, name=text)
    if text in REFRESH_SCOPES:
        return Scope(ScopeKind.REFRESH, name=text)
    if text == "launch" or _LAUNCH_CONTEXT.fullmatch(text):
        return Scope(ScopeKind.LAUNCH, name=text)
    return Scope(ScopeKind.OTHER, name=text)


@lru_cache(maxsize=4096)
def parse_scopes(text: str, *, strict: bool = True) -> tuple[Scope, ...]:
    """Parse a space-separated scope string (RFC 6749 section 3.3) into distinct scopes, in order.

    ``strict=False`` drops malformed clinical scopes instead of raising ("MAY be ignored")."""
    seen: dict[Scope, None] = {}
    for token in text.split():
        try:
            scope = parse_scope(token)
        except ScopeError:
            if strict:
                raise
            continue
        seen.setdefault(scope, None)
    return tuple(seen)


def scope_string(scopes: Iterable[Scope]) -> str:
    """The space-separated canonical string of scopes (duplicates removed, order kept)."""
    return " ".join(dict.fromkeys(s.to_string() for s in scopes))


def _as_scopes(value: str | Iterable[Scope]) -> tuple[Scope, ...]:
    return parse_scopes(value) if isinstance(value, str) else tuple(value)


def _intersect(req: Scope, allow: Scope) -> Scope | None:
    """The part of ``req`` that ``allow`` also permits, or None.

    Same context only (a ``user/`` scope does not stand in for a ``patient/`` one); the narrower type wins over ``*``;
    letters are intersected; constraints are kept when one side's are a subset of the other's (the stricter wins),
    and two unrelated constraints give nothing rather than an invented combined scope."""
    if req.kind is not ScopeKind.RESOURCE or allow.kind is not ScopeKind.RESOURCE:
        return req if req == allow else None
    if req.context != allow.context:
        return None
    if allow.resource_type in ("*", req.resource_type):
        resource_type = req.resource_type
    elif req.resource_type == "*":
        resource_type = allow.resource_type
    else:
        return None
    letters = "".join(letter for letter in LETTERS if letter in req.permissions and letter in allow.permissions)
    if not letters:
        return None
    if set(allow.params) <= set(req.params):
        params = req.params
    elif set(req.params) <= set(allow.params):
        params = allow.params
    else:
        return None
    return Scope(ScopeKind.RESOURCE, context=req.context, resource_type=resource_type, permissions=letters,
                 params=params, v1=req.v1)


def _intersection(requested: tuple[Scope, ...], allowed: tuple[Scope, ...]) -> tuple[Scope, ...]:
    """Each requested scope: itself when one allowed scope covers it, else its intersections with the allowed ones
    (minus any covered by another of them), in requested order, without duplicates."""
    out: dict[Scope, None] = {}
    for req in requested:
        if any(a.covers(req) for a in allowed):
            out.setdefault(req, None)
            continue
        parts = list(dict.fromkeys(p for a in allowed if (p := _intersect(req, a)) is not None))
        for part in parts:
            if not any(other is not part and other != part and other.covers(part) for other in parts):
                out.setdefault(part, None)
    return tuple(out)


def grant(requested: str | Iterable[Scope], allowed: str | Iterable[Scope]) -> str:
    """The scopes granted when a client asks for ``requested`` and may have ``allowed`` (its registration, the
    user's permissions or consent): the intersection, honouring wildcards (``user/*.rs`` allowed covers
    ``user/Observation.r``) and granular constraints (a narrower ``?category=`` request is fine; "Resource-level
    scope must not be granted when only granular requested"). "The server may grant less"; never more.

    Raises :class:`ScopeError` on a malformed requested or allowed scope."""
    return scope_string(_intersection(_as_scopes(requested), _as_scopes(allowed)))


def narrow(requested: str | Iterable[Scope], approved_subset: str | Iterable[Scope]) -> str:
    """What remains of ``requested`` after the user unticks scopes on the consent page (or a refresh request asks
    for a subset): the scopes of ``requested`` the user kept, never anything beyond ``requested`` even if the form
    was tampered with. A wildcard the page expanded into per-type boxes narrows to the ticked types."""
    return scope_string(_intersection(_as_scopes(requested), _as_scopes(approved_subset)))


def covers_all(granted: str | Iterable[Scope], requested: str | Iterable[Scope]) -> bool:
    """Every requested scope lies within one granted scope (e.g. a refresh ``scope`` parameter: "The requested scope
    MUST NOT include any scope not originally granted", RFC 6749 section 6)."""
    held = _as_scopes(granted)
    return all(any(g.covers(r) for g in held) for r in _as_scopes(requested))
