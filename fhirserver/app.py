"""create_app(settings): wires settings, logging, the store and the blueprints; nothing else."""

from __future__ import annotations

from flask import Flask

from conformance.capability import capability_statement
from fhirserver import logs
from fhirserver.api import auth, errors, fhir, ops
from fhirserver.config import Settings
from fhirserver.search.indexing import search_indexes
from fhirserver.store.database import Store


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app; settings default to the environment's."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    app = Flask("fhirserver")
    app.config.update(SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=64 * 1024 * 1024)
    app.extensions["fhir.settings"] = settings
    store = Store(settings.database_uri, settings.db_name, settings.db_timeout, settings.commit_timeout)
    store.maintain(interval=min(settings.commit_timeout / 3, 10.0), index_models=search_indexes)
    app.extensions["fhir.store"] = store
    app.extensions["fhir.authenticate"] = auth.open_access if settings.auth == "off" else auth.bearer(None)
    app.register_blueprint(fhir)
    app.register_blueprint(ops)
    errors.register(app)
    capability_statement(settings.base_url)  # build once at start-up, not on the first /metadata request
    logs.log_requests(app)
    return app
