"""Demo accounts and SMART clients for the seeded health system, made with smart_auth's own stores.

DEMO ONLY: every demo user has the password `DEMO_PASSWORD` and the confidential app the secret
`DEMO_CLIENT_SECRET`; both are printed by `fhirserver run`. Never seed these into a real deployment.

- Members: the first households' members aged 13 or more (`given.familyN`, fhirUser = their Patient). Parents of
  minors and an adult child caring for a parent are proxies through their RelatedPerson records (see members.py).
- Clinicians: the first practitioners (`dr.familyN`, fhirUser = their Practitioner); the first one is an admin.
- Clients: a public portal app (PKCE, no secret), a confidential app (client_secret_basic) and a SMART Backend
  Services client (private_key_jwt, RS384) whose key pair is written to `keys_dir` (git-ignored `.local/keys/`).
Running it again creates nothing new: existing users and clients are left as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from pymongo.database import Database

from seed_data.generator import demo_members, world
from smart_auth.clients import ClientRegistry, RegistrationError
from smart_auth.keys import generate_key
from smart_auth.users import UserError, UserStore

DEMO_PASSWORD = "demo-only-password"  # noqa: S105 - demo accounts only, printed on purpose
DEMO_CLIENT_SECRET = "demo-only-confidential-client-secret-not-for-production"  # noqa: S105
PORTAL_CLIENT = "demo-portal"
CONFIDENTIAL_CLIENT = "demo-confidential-app"
BACKEND_CLIENT = "demo-backend"
REDIRECT_URIS = ["http://localhost:3000/callback", "http://127.0.0.1:3000/callback"]
PORTAL_SCOPE = ("openid fhirUser profile launch/patient offline_access patient/*.rs patient/Appointment.cu "
                "patient/Communication.c patient/MedicationRequest.u patient/QuestionnaireResponse.cu")
CONFIDENTIAL_SCOPE = "openid fhirUser profile launch launch/patient offline_access patient/*.rs user/*.rs"
BACKEND_SCOPE = "system/*.rs"
MEMBER_ACCOUNTS = 12
MIN_ACCOUNT_AGE = 13
CLINICIAN_ACCOUNTS = 3


@dataclass
class DemoAccount:
    username: str
    fhir_user: str
    who: str


@dataclass
class AccountsSummary:
    users: list[DemoAccount] = field(default_factory=list)
    created_users: int = 0
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> what it is
    created_clients: int = 0
    key_file: Path | None = None

    def lines(self, base_url: str) -> list[str]:
        out = [f"DEMO ONLY - accounts of the seeded health system (password for all: {DEMO_PASSWORD})"]
        out += [f"  {a.username:<28} {a.fhir_user:<26} {a.who}" for a in self.users]
        out.append("DEMO ONLY - SMART clients:")
        out += [f"  {cid:<28} {what}" for cid, what in self.clients.items()]
        out.append(f"  an app signs in through the endpoints of {base_url}/.well-known/smart-configuration, e.g. "
                   f"client_id={PORTAL_CLIENT} redirect_uri={REDIRECT_URIS[0]} with PKCE S256")
        return out


def member_accounts(seed: int, scale: str, anchor: date, limit: int = MEMBER_ACCOUNTS) -> list[DemoAccount]:
    people = demo_members(seed, scale, anchor, limit)
    cared_for: dict[int, list[str]] = {}
    for m in people:
        for proxy, role, _ in m.proxies:
            as_who = "as parent" if role in ("MTH", "FTH") else "as adult child"
            cared_for.setdefault(proxy.number, []).append(f"{m.name['text']} {as_who}")
    out = []
    for m in people:
        if m.age(anchor) < MIN_ACCOUNT_AGE:
            continue  # young children have no login: their parents act for them
        who = f"member, age {m.age(anchor)}"
        if m.number in cared_for:
            who += "; proxy for " + ", ".join(cared_for[m.number])
        out.append(DemoAccount(m.username, f"Patient/{m.key}", who))
    return out


def clinician_accounts(seed: int, scale: str, anchor: date, limit: int = CLINICIAN_ACCOUNTS) -> list[DemoAccount]:
    w = world(seed, scale, anchor)
    out = []
    for n, c in enumerate(w.clinicians[:limit]):
        family = c.name.split(" ", 1)[1]
        who = f"clinician, {c.specialty[1]}" + (" (admin)" if n == 0 else "")
        out.append(DemoAccount(f"dr.{family}{c.key[-4:]}".lower(), f"Practitioner/{c.key}", who))
    return out


def _backend_keys(keys_dir: Path) -> tuple[dict[str, Any], Path, bool]:
    """The Backend Services client's key pair: read from `keys_dir`, or made and written there (0600)."""
    private_file = keys_dir / f"{BACKEND_CLIENT}.private.jwks.json"
    if private_file.exists():
        private = json.loads(private_file.read_text())
        public = {"keys": [{k: v for k, v in key.items() if k in ("kty", "n", "e", "kid", "alg", "use")}
                           for key in private["keys"]]}
        return public, private_file, False
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key("RS384")
    fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [key.as_dict(private=True)]}, fh, indent=2)
    public = {"keys": [key.as_dict(private=False)]}
    (keys_dir / f"{BACKEND_CLIENT}.public.jwks.json").write_text(json.dumps(public, indent=2))
    return public, private_file, True


def _register(registry: ClientRegistry, metadata: dict[str, Any], replace: bool = False) -> bool:
    """Register unless the client_id exists (or replace it when asked); True when registered now."""
    if replace:
        registry.delete(metadata["client_id"])
    elif registry.get(metadata["client_id"]) is not None:
        return False
    try:
        registry.register(metadata, admin=True)
    except RegistrationError as exc:
        if "already registered" in exc.description:
            return False
        raise
    return True


def create_accounts(db: Database, seed: int, scale: str, anchor: date, keys_dir: Path,
                    hasher: PasswordHasher | None = None, members: int = MEMBER_ACCOUNTS) -> AccountsSummary:
    """Demo users and clients on the authorization server's database `db`."""
    summary = AccountsSummary()
    users = UserStore(db, hasher=hasher)
    accounts = member_accounts(seed, scale, anchor, members) + clinician_accounts(seed, scale, anchor)
    first_clinician = next(a.username for a in accounts if a.fhir_user.startswith("Practitioner/"))
    for account in accounts:
        summary.users.append(account)
        if users.get(account.username) is not None:
            continue
        try:
            users.create_user(account.username, DEMO_PASSWORD, account.fhir_user,
                              roles=["admin"] if account.username == first_clinician else [],
                              display=account.who.split(";")[0])
            summary.created_users += 1
        except UserError as exc:
            if exc.code != "exists":
                raise
    registry = ClientRegistry(db)
    common = {"redirect_uris": REDIRECT_URIS, "grant_types": ["authorization_code", "refresh_token"]}
    summary.created_clients += _register(registry, {
        **common, "client_id": PORTAL_CLIENT, "client_name": "Member Portal (demo)",
        "token_endpoint_auth_method": "none", "scope": PORTAL_SCOPE})
    summary.clients[PORTAL_CLIENT] = "public portal app (PKCE, no secret)"
    summary.created_clients += _register(registry, {
        **common, "client_id": CONFIDENTIAL_CLIENT, "client_name": "Care Companion (demo confidential app)",
        "token_endpoint_auth_method": "client_secret_basic", "client_secret": DEMO_CLIENT_SECRET,
        "scope": CONFIDENTIAL_SCOPE, "launch_uri": "http://localhost:3000/launch"})
    summary.clients[CONFIDENTIAL_CLIENT] = f"confidential app, secret {DEMO_CLIENT_SECRET}"
    public, key_file, new_key = _backend_keys(keys_dir)
    summary.created_clients += _register(registry, {
        "client_id": BACKEND_CLIENT, "client_name": "Partner Payer Bulk Export (demo backend service)",
        "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"],
        "scope": BACKEND_SCOPE, "jwks": public}, replace=new_key)
    summary.clients[BACKEND_CLIENT] = f"Backend Services (private_key_jwt RS384), private key {key_file}"
    summary.key_file = key_file
    return summary
