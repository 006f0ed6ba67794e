"""Fetch the official FHIR R4 examples package and unpack it into ``.local/r4-examples/``.

The package ``hl7.fhir.r4.examples`` 4.0.1 (CC0-1.0, 5,307 files ``package/<Type>-<id>.json``) is downloaded
with ``npm pack`` (npm's ordinary client; nothing is installed), its integrity is checked against the sha512
recorded below (the value ``npm view hl7.fhir.r4.examples@4.0.1 dist.integrity`` prints), and it is unpacked
next to the tgz. Both steps are skipped when already done, so a tgz copied there by hand works offline.

Run: ``.venv/bin/python scripts/fetch_r4_examples.py`` (prints the folder of the example files).
Used by ``tests/test_examples.py`` through ``examples_dir()``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE_NAME = "hl7.fhir.r4.examples"
PACKAGE_VERSION = "4.0.1"
TGZ_NAME = f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
# npm's dist.integrity of the published tarball (Subresource Integrity format: "sha512-" + base64 digest).
INTEGRITY = "sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/zLw=="
FILE_COUNT = 5307

LOCAL_DIR = Path(__file__).resolve().parent.parent / ".local" / "r4-examples"
DONE_MARKER = ".unpacked"  # written into the package folder once unpacking finished, holding INTEGRITY


class FetchError(RuntimeError):
    """The package could not be downloaded, verified or unpacked."""


def integrity(path: Path) -> str:
    """The Subresource Integrity string (sha512, base64) of a file, as npm records it."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _verified(tgz: Path) -> bool:
    """Whether ``tgz`` exists and has the recorded integrity."""
    return tgz.is_file() and integrity(tgz) == INTEGRITY


def download(dest: Path) -> Path:
    """``npm pack`` the package into ``dest``; return the tgz after checking its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is not installed: cannot download {PACKAGE_NAME}@{PACKAGE_VERSION} "
                         f"(or copy {TGZ_NAME} into {dest})")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix="npm-pack-") as tmp:
        done = subprocess.run([npm, "pack", f"{PACKAGE_NAME}@{PACKAGE_VERSION}", "--pack-destination", tmp,
                               "--json", "--silent"], capture_output=True, text=True, cwd=tmp, check=False)
        if done.returncode != 0:
            raise FetchError(f"npm pack failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
        packed = Path(tmp) / TGZ_NAME
        if not packed.is_file():
            raise FetchError(f"npm pack did not produce {TGZ_NAME}: {done.stdout.strip()[-500:]}")
        got = integrity(packed)
        if got != INTEGRITY:
            raise FetchError(f"{TGZ_NAME} has integrity {got}, expected {INTEGRITY}")
        tgz = dest / TGZ_NAME
        packed.replace(tgz)
    return tgz


def unpack(tgz: Path, dest: Path) -> Path:
    """Unpack the tgz into ``dest/package`` (via a temporary folder, so a half-done unpack is never used)."""
    target = dest / "package"
    with tempfile.TemporaryDirectory(dir=dest, prefix="unpack-") as tmp:
        with tarfile.open(tgz, mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")  # "data": no absolute paths, links out of the folder or devices
        unpacked = Path(tmp) / "package"
        count = sum(1 for p in unpacked.iterdir() if p.is_file())
        if count != FILE_COUNT:
            raise FetchError(f"{tgz.name} holds {count} files under package/, expected {FILE_COUNT}")
        manifest = json.loads((unpacked / "package.json").read_text(encoding="utf-8"))
        if (manifest.get("name"), manifest.get("version")) != (PACKAGE_NAME, PACKAGE_VERSION):
            raise FetchError(f"{tgz.name} is {manifest.get('name')}@{manifest.get('version')}")
        (unpacked / DONE_MARKER).write_text(INTEGRITY + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        unpacked.replace(target)
    return target


def examples_dir(dest: Path = LOCAL_DIR) -> Path:
    """The folder holding ``<Type>-<id>.json`` of every R4 example, downloading and unpacking when needed."""
    target = dest / "package"
    marker = target / DONE_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == INTEGRITY:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tgz = dest / TGZ_NAME
    if not _verified(tgz):
        tgz = download(dest)
    return unpack(tgz, dest)


def main() -> int:
    """Fetch and unpack; print the folder."""
    try:
        print(examples_dir())
    except FetchError as exc:
        print(f"fetch_r4_examples: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
