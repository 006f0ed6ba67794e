"""Settings: parsed in one place; a bad value stops start-up with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fhirserver.config import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.port == 8080 and s.host == "127.0.0.1"
    assert s.base_url == "http://127.0.0.1:8080/fhir"
    assert s.db_backend == "sqlite" and s.embedded_database and s.auth == "on"
    assert s.database_uri == "mongodb://127.0.0.1:27027/"


def test_mongodb_uri_selects_external_database():
    s = Settings.from_env({"MONGODB_URI": "mongodb://db.example:27017/?replicaSet=rs0"})
    assert not s.embedded_database
    assert s.database_uri == "mongodb://db.example:27017/?replicaSet=rs0"


@pytest.mark.parametrize("name,value", [
    ("FHIR_PORT", "eighty"), ("FHIR_PORT", "70000"), ("FHIR_DB_BACKEND", "oracle"),
    ("MONGODB_URI", "postgres://x"), ("FHIR_BASE_URL", "not a url"), ("FHIR_LOG_LEVEL", "LOUD"),
    ("FHIR_THREADS", "0"), ("FHIR_DB_TIMEOUT", "-1"), ("FHIR_WORKERS", "many"), ("FHIR_DB_NAME", "a.b"),
])
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert err.value.name == name
    assert name in str(err.value)


def test_invalid_setting_stops_startup_with_one_line():
    env = {**os.environ, "FHIR_PORT": "not-a-port"}
    done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "serve"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "FHIR_PORT" in lines[0] and "not-a-port" in lines[0]
