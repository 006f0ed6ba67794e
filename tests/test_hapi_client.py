"""HAPI FHIR's generic client, with its strict parser, as a second, independent client of the server.

Runs the `client` mode of the Java harness (conformance/validator, see conformance/validator.py) against the shared
server: metadata, create, read, update, vread, history, search with paging and _include, a transaction and a delete.
The strict parser turns any unknown element, wrong type or malformed value in a response into a failure.
"""

from __future__ import annotations

import subprocess

from conformance import validator as harness


def test_hapi_generic_client_strict(server):
    harness.build()
    proc = subprocess.run(harness.client_command(server.base), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    print(proc.stdout)
    assert proc.returncode == 0, f"HAPI client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "10 steps, 0 failed" in proc.stdout
