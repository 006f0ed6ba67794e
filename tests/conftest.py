"""Session fixtures: one real FerretDB and one real server process shared by the tests that only read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ServerProcess, serve, start_ferretdb

# Every FHIR body the server returns goes through HAPI's validator (FHIR_VALIDATE=0 turns it off): see the plugin.
pytest_plugins = ["tests.validator_plugin"]


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory):
    db = start_ferretdb(tmp_path_factory.mktemp("ferretdb"))
    yield db
    db.stop()


@pytest.fixture(scope="session")
def server(ferretdb, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = serve(ferretdb.uri, tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    proc.stop()
