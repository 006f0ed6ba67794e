"""The README stays true: its settings table lists exactly the settings the server reads."""

from __future__ import annotations

import re

from fhirserver.config import SETTINGS
from tests.servers import REPO


def test_readme_settings_table_matches_config():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.M))
    assert documented == {s.env for s in SETTINGS.values()}


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / "README.md").read_text()
    assert "make test" in (REPO / ".ci" / "run").read_text()
