"""create_app(settings): wires settings, logging, the store and the blueprints; nothing else."""

from __future__ import annotations

from flask import Flask

import smart_auth
from conformance.capability import capability_statement
from fhirserver import dbserver, jobs, logs
from fhirserver.api import auditing, auth, errors, fhir, ops
from fhirserver.api.metadata import oauth_endpoints
from fhirserver.api.scheduling import scheduling
from fhirserver.api.smart import discovery
from fhirserver.audit import AuditTrail
from fhirserver.config import Settings
from fhirserver.resources import proxies
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
    store.maintain(interval=min(settings.commit_timeout / 3, 10.0), index_models=search_indexes,
                   native_indexes=dbserver.native_indexer(settings))
    app.extensions["fhir.store"] = store
    app.extensions["fhir.jobs"] = jobs.start(store, settings)
    authz = smart_auth.init_app(app, store.db, settings,
                                patients_for=lambda user: proxies.patients_for(store, user.username, user.fhir_user))
    app.extensions["fhir.authenticate"] = auth.open_access if settings.auth == "off" else auth.bearer(authz.verify)
    if settings.auth == "on":
        auditing.install(app, AuditTrail(store))
    app.register_blueprint(fhir)
    app.register_blueprint(ops)
    app.register_blueprint(scheduling)
    app.register_blueprint(discovery)
    errors.register(app)
    # build once at start-up, not on the first /metadata request
    capability_statement(settings.base_url, oauth_endpoints(settings))
    logs.log_requests(app)
    return app
