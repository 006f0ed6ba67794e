"""The `fhirserver` command: serve, run (database + server), db start|stop|status|build."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from fhirserver.config import Settings, SettingsError


def _settings(**overrides: Any) -> Settings:
    """The environment's settings with command-line overrides; a bad one ends the command with one line."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        click.echo(f"fhirserver: {exc}", err=True)
        sys.exit(2)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return settings.replace(**changes) if changes else settings


def _workers(settings: Settings) -> int:
    return int(settings.workers) if settings.workers else 2 * (os.cpu_count() or 1)


def serve_forever(settings: Settings) -> None:
    """Run the app under gunicorn (gthread workers) until SIGINT/SIGTERM."""
    from gunicorn.app.base import BaseApplication

    from fhirserver.app import create_app

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": _workers(settings),
                "threads": settings.threads,
                "worker_class": "gthread",
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "graceful_timeout": 10,
                "timeout": 120,
                "keepalive": 5,
                "proc_name": "fhirserver",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    if _workers(settings) > 1:
        # Build the models and search parameters of every type once, before the workers fork, instead of in each
        # worker on its first requests (one worker, as in the tests, builds only what it meets, as before).
        from fhirserver.interactions.transaction import warm_up

        warm_up()
    Server().run()


@click.group()
def main() -> None:
    """A FHIR R4 health data server."""


@main.command()
@click.option("--host", default=None, help="listen address (FHIR_HOST)")
@click.option("--port", type=int, default=None, help="listen port (FHIR_PORT)")
def serve(host: str | None, port: int | None) -> None:
    """Serve the FHIR API on the configured database (it must be running)."""
    serve_forever(_settings(host=host, port=port))


@main.command()
@click.option("--host", default=None, help="listen address (FHIR_HOST)")
@click.option("--port", type=int, default=None, help="listen port (FHIR_PORT)")
@click.option("--demo/--no-demo", default=None,
              help="load the small demo health system and its demo accounts into an empty database (default: only "
                   "on the embedded database, never on a MONGODB_URI one)")
def run(host: str | None, port: int | None, demo: bool | None) -> None:
    """Start the embedded database when needed, load the demo into an empty database, then serve; stops what it
    started on exit."""
    from fhirserver import dbserver

    settings = _settings(host=host, port=port)
    started_here = settings.embedded_database and dbserver.embedded(settings).pid() is None
    started = time.perf_counter()
    uri = _db_call(dbserver.start, settings)
    click.echo(f"database ready at {uri} ({time.perf_counter() - started:.1f}s)", err=True)
    try:
        if demo or (demo is None and settings.embedded_database):
            from seed_data.demo import seed_if_empty

            for line in seed_if_empty(settings):
                click.echo(line, err=True)
        click.echo(f"FHIR base: {settings.base_url}  (metadata: {settings.base_url}/metadata)", err=True)
        serve_forever(settings)
    finally:
        if started_here:
            dbserver.stop(settings)


def _db_call(fn, settings: Settings):
    from fhirserver.dbserver.ferretdb import DatabaseProcessError

    try:
        return fn(settings)
    except DatabaseProcessError as exc:
        click.echo(f"fhirserver: {exc}", err=True)
        sys.exit(1)


@main.group()
def db() -> None:
    """The embedded database (FerretDB on SQLite or PostgreSQL); unused when MONGODB_URI is set."""


@db.command("build")
def db_build() -> None:
    """Build FerretDB into the state folder (skipped when already built)."""
    from fhirserver.dbserver import build_ferretdb

    settings = _settings()
    _db_call(lambda s: build_ferretdb(s.state_dir / "bin" / "ferretdb"), settings)
    click.echo(str(settings.state_dir / "bin" / "ferretdb"))


@db.command("start")
def db_start() -> None:
    """Start the embedded database and wait until it answers."""
    from fhirserver import dbserver

    click.echo(_db_call(dbserver.start, _settings()))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded database; its files stay."""
    from fhirserver import dbserver

    _db_call(dbserver.stop, _settings())


@db.command("status")
def db_status() -> None:
    """Print what runs, as JSON; exit 1 when the database does not answer."""
    from fhirserver import dbserver

    info = dbserver.status(_settings())
    click.echo(json.dumps(info, indent=2))
    sys.exit(0 if info.get("answers") else 1)


@db.command("reindex")
@click.option("--type", "types", multiple=True, help="only these resource types (repeatable)")
def db_reindex(types: tuple[str, ...]) -> None:
    """Recompute the search index of every stored resource (after definitions change)."""
    from fhirserver.interactions.reindex import reindex
    from fhirserver.store.database import Store

    settings = _settings()
    store = Store(settings.database_uri, settings.db_name, settings.db_timeout, settings.commit_timeout)
    chosen = list(types) or store.resource_types()
    total = sum(store.db[t].estimated_document_count() for t in chosen)
    with click.progressbar(length=total, label="re-indexing", show_pos=True, show_percent=True) as bar:
        counts = reindex(store, chosen, bar.update)
    click.echo(f"re-indexed {sum(counts.values())} resources in {len(counts)} types")


@main.group("jobs")
def jobs_group() -> None:
    """Background jobs (hold expiry, appointment notices, reminders, waitlist offers)."""


@jobs_group.command("run-once")
@click.option("--job", "names", multiple=True, help="only this job (repeatable): holds, waitlist, notices, reminders")
def jobs_run_once(names: tuple[str, ...]) -> None:
    """Run one round of the jobs now, each under its lease; prints what each did as JSON."""
    from fhirserver.jobs import Jobs
    from fhirserver.store.database import Store

    settings = _settings()
    store = Store(settings.database_uri, settings.db_name, settings.db_timeout, settings.commit_timeout)
    runner = Jobs(store, settings)
    unknown = [n for n in names if n not in runner.jobs]
    if unknown:
        click.echo(f"fhirserver: unknown job {unknown[0]!r} (jobs: {', '.join(runner.jobs)})", err=True)
        sys.exit(2)
    click.echo(json.dumps(runner.run_once(list(names) or None), default=str))


# -- SMART authorization server: users and clients -------------------------------------------------------------------


def _auth_db(settings: Settings) -> Any:
    """The pymongo Database of the configured server (it must be running), for the `auth` commands."""
    from fhirserver.store.connection import connect

    return connect(settings.database_uri, settings.db_name, settings.db_timeout)


@main.group("auth")
def auth_group() -> None:
    """Users and OAuth clients of the SMART authorization server."""


@auth_group.command("add-client")
@click.option("--name", required=True, help="client name shown on the consent page")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="registered redirect URI (repeatable)")
@click.option("--public", "kind", flag_value="public", help="public client (no secret; PKCE only)")
@click.option("--secret", "kind", flag_value="secret", default=True,
              help="confidential client with a generated secret (client_secret_basic; the default)")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False),
              help="confidential-asymmetric client (private_key_jwt) with this public JWK Set file")
@click.option("--jwks-uri", help="confidential-asymmetric client whose public keys are at this https URL")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="allowed scopes, space-separated or repeated (e.g. 'launch/patient patient/*.rs openid')")
@click.option("--backend", is_flag=True, help="SMART Backend Services client (client_credentials; needs --jwks)")
@click.option("--launch-uri", default=None, help="the app's EHR launch URL")
@click.option("--client-id", default=None, help="choose the client_id instead of a generated one")
def auth_add_client(name: str, redirect_uris: tuple[str, ...], kind: str, jwks_file: str | None,
                    jwks_uri: str | None, scopes: tuple[str, ...], backend: bool, launch_uri: str | None,
                    client_id: str | None) -> None:
    """Register an OAuth client as an administrator; prints the registration (client_id, and the secret once)."""
    from smart_auth.clients import ClientRegistry, RegistrationError

    if jwks_file or jwks_uri:
        method = "private_key_jwt"
    else:
        method = "none" if kind == "public" else "client_secret_basic"
    grants = ["client_credentials"] if backend else ["authorization_code", "refresh_token"]
    metadata: dict[str, Any] = {
        "client_name": name, "token_endpoint_auth_method": method, "grant_types": grants,
        "scope": " ".join(" ".join(scopes).split()),
    }
    if redirect_uris:
        metadata["redirect_uris"] = list(redirect_uris)
    if jwks_file:
        with open(jwks_file, encoding="utf-8") as fh:
            metadata["jwks"] = json.load(fh)
    if jwks_uri:
        metadata["jwks_uri"] = jwks_uri
    if launch_uri:
        metadata["launch_uri"] = launch_uri
    if client_id:
        metadata["client_id"] = client_id
    try:
        client, secret = ClientRegistry(_auth_db(_settings())).register(metadata, admin=True)
    except RegistrationError as exc:
        click.echo(f"fhirserver: {exc.description}", err=True)
        sys.exit(1)
    click.echo(json.dumps(client.registration_response(secret), indent=2))
    if secret:
        click.echo("The client_secret is shown only now; store it safely.", err=True)


@auth_group.command("add-user")
@click.argument("username")
@click.option("--fhir-user", required=True, help="the user's FHIR resource, e.g. Patient/123 or Practitioner/9")
@click.option("--admin", is_flag=True, help="give the user the admin role (client registration, launches)")
@click.option("--email", default=None, help="address for password reset links")
@click.option("--display", default=None, help="name shown on the sign-in pages")
@click.option("--password-env", default="FHIR_USER_PASSWORD", show_default=True,
              help="environment variable holding the password (asked for when unset)")
def auth_add_user(username: str, fhir_user: str, admin: bool, email: str | None, display: str | None,
                  password_env: str) -> None:
    """Create a user account linked to a FHIR resource (password from the environment or a prompt)."""
    from smart_auth.users import UserError, UserStore

    password = os.environ.get(password_env) or click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = UserStore(_auth_db(_settings())).create_user(
            username, password, fhir_user, email=email, roles=["admin"] if admin else [], display=display)
    except UserError as exc:
        click.echo(f"fhirserver: {exc}", err=True)
        sys.exit(1)
    click.echo(json.dumps({"username": user.username, "fhirUser": user.fhir_user, "roles": list(user.roles)}))


# -- seed data and imports -------------------------------------------------------------------------------------------


def _sink(settings: Settings, url: str | None, token: str | None):
    """HTTP to a running server at `url`, else the Transaction interaction in this process on the database."""
    from seed_data.loader import HttpSink, StoreSink

    if url:
        return HttpSink(url, token)
    from fhirserver.store.database import Store

    store = Store(settings.database_uri, settings.db_name, settings.db_timeout, settings.commit_timeout)
    return StoreSink(store, settings.base_url)


def _load_options(fn):
    for option in reversed([
        click.option("--url", default=None, help="FHIR base of a running server to load through (HTTP); default: "
                                                 "this process writes through the same Transaction interaction"),
        click.option("--token", envvar="FHIR_TOKEN", default=None, help="bearer token for --url (FHIR_TOKEN)"),
        click.option("--batch", "batch_size", type=click.IntRange(1, 5000), default=250, show_default=True,
                     help="resources per transaction Bundle"),
        click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
                     help="transactions in flight at once"),
    ]):
        fn = option(fn)
    return fn


@main.command("seed")
@click.option("--scale", type=click.Choice(["small", "medium", "large"]), default="small", show_default=True)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="same seed, same data")
@click.option("--today", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="the date anchor (default: today): history is dated back from it and slots cover the 8 weeks "
                   "from it; same seed and same anchor give the same data")
@click.option("--accounts/--no-accounts", default=True, show_default=True,
              help="also create the demo users and SMART clients (on the configured database)")
@click.option("--conditional", is_flag=True, help="ifNoneExist on every created resource (for concurrent loaders; "
                                                  "slow on large databases)")
@_load_options
def seed_command(scale: str, seed_value: int, today, accounts: bool, conditional: bool, url: str | None,
                 token: str | None, batch_size: int, workers: int) -> None:
    """Load a generated health system (small: a demo; large: 10,000 members and over 1,000,000 resources)."""
    from datetime import date

    from seed_data import generator
    from seed_data.demo import progress_load
    from seed_data.loader import LoadError

    settings = _settings()
    anchor = today.date() if today else date.today()
    click.echo(f"seed {seed_value}, scale {scale}, anchor {anchor.isoformat()}", err=True)
    try:
        summary = progress_load(generator.groups(seed_value, scale, anchor), _sink(settings, url, token),
                                generator.estimate(scale), f"seeding {scale}", batch_size, workers, conditional)
    except LoadError as exc:
        click.echo(f"fhirserver: {exc}", err=True)
        sys.exit(1)
    for line in summary.lines():
        click.echo(line)
    if accounts:
        from seed_data.accounts import create_accounts

        made = create_accounts(_auth_db(settings), seed_value, scale, anchor, settings.state_dir / "keys")
        for line in made.lines(url or settings.base_url):
            click.echo(line)


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_load_options
def import_command(paths: tuple[str, ...], url: str | None, token: str | None, batch_size: int,
                   workers: int) -> None:
    """Load FHIR Bundles (.json) and NDJSON files (.ndjson, .ndjson.gz) or folders of them; twice adds nothing."""
    from seed_data import importer
    from seed_data.demo import progress_load
    from seed_data.loader import LoadError

    settings = _settings()
    try:
        summary = progress_load(importer.groups(paths), _sink(settings, url, token), importer.count(paths),
                                "importing", batch_size, workers)
    except (LoadError, importer.UnreadableFile) as exc:
        click.echo(f"fhirserver: {exc}", err=True)
        sys.exit(1)
    for line in summary.lines():
        click.echo(line)


if __name__ == "__main__":
    main()
