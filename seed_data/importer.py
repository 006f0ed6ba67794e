"""`fhirserver import`: FHIR Bundles (.json) and NDJSON files (.ndjson, .ndjson.gz) into groups for the loader.

A Bundle (transaction, batch, collection, searchset) is one patient's record or a set of shared resources:
its `urn:uuid` fullUrls become `Type/id` (the id from the resource, else from the urn), references to them are
rewritten, each shared resource (Organization, Practitioner, Location, ...: see loader.KEYED_TYPES) becomes a group
of its own, PUT at its id (so the hospital that every Synthea patient file repeats is written once), and the rest
is one group headed by the Patient. An NDJSON line is a resource with its id and plain references: a group of its
own, PUT at its id. Files are read one at a time and NDJSON line by line, so memory stays flat.
"""

from __future__ import annotations

import gzip
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from seed_data.common import Resource
from seed_data.loader import KEYED_TYPES

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
SUFFIXES = (".json", ".ndjson", ".ndjson.gz", ".jsonl")
_IDS = uuid.UUID("6f1c2b56-9d0e-4c55-9f5e-51ed5eed0002")


class UnreadableFile(ValueError):
    """A file that is not FHIR JSON or NDJSON."""


def files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to import, folders expanded (sorted, so the order is stable), shared-resource files first."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise UnreadableFile(f"{p}: no such file or folder")
    # Synthea writes hospitals and practitioners into files of their own that the patient files refer to.
    return sorted(out, key=lambda f: (not f.name.startswith(("hospitalInformation", "practitionerInformation")),
                                      str(f)))


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    """A copy of `value` with every `reference` found in `mapping` replaced."""
    if isinstance(value, dict):
        return {k: (mapping.get(v, v) if k == "reference" and isinstance(v, str) else rewrite_references(v, mapping))
                for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


def bundle_groups(bundle: dict[str, Any], where: str) -> list[list[Resource]]:
    """The groups of one Bundle (see the module docstring)."""
    resources: list[Resource] = []
    mapping: dict[str, str] = {}
    for n, entry in enumerate(bundle.get("entry") or []):
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            continue
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        rid = res.get("id")
        if not (isinstance(rid, str) and ID_RE.fullmatch(rid)):
            tail = full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1] if full_url else ""
            rid = tail if ID_RE.fullmatch(tail) else str(uuid.uuid5(_IDS, f"{where}#{n}"))
        res = {**res, "id": rid}
        if full_url:
            mapping[full_url] = f"{res['resourceType']}/{rid}"
        resources.append(res)
    resources = [rewrite_references(r, mapping) for r in resources] if mapping else resources
    shared = [[r] for r in resources if r["resourceType"] in KEYED_TYPES and r["resourceType"] != "Patient"]
    rest = [r for r in resources if r["resourceType"] not in KEYED_TYPES or r["resourceType"] == "Patient"]
    rest.sort(key=lambda r: r["resourceType"] != "Patient")  # the Patient heads its record (stable sort)
    return shared + ([rest] if rest else [])


def file_groups(path: Path) -> Iterator[list[Resource]]:
    """The groups of one file."""
    if path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl")):
        with _open(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    res = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise UnreadableFile(f"{path}:{line_no}: not JSON ({exc})") from None
                if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
                    raise UnreadableFile(f"{path}:{line_no}: not a FHIR resource")
                if not (isinstance(res.get("id"), str) and ID_RE.fullmatch(res["id"])):
                    res = {**res, "id": str(uuid.uuid5(_IDS, f"{path.name}:{line_no}"))}
                yield [res]
        return
    with _open(path) as fh:
        try:
            data = orjson.loads(fh.read())
        except orjson.JSONDecodeError as exc:
            raise UnreadableFile(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise UnreadableFile(f"{path}: not a FHIR resource or Bundle")
    if data["resourceType"] == "Bundle" and data.get("type") in ("transaction", "batch", "collection", "searchset",
                                                                 "document", "message", "history"):
        yield from bundle_groups(data, path.name)
    else:
        if not (isinstance(data.get("id"), str) and ID_RE.fullmatch(data["id"])):
            data = {**data, "id": str(uuid.uuid5(_IDS, path.name))}
        yield [data]


def groups(paths: Iterable[str | Path]) -> Iterator[list[Resource]]:
    """The groups of all files; a shared resource that several Bundles repeat comes once (the first), so two
    batches in flight never write it both."""
    seen: set[tuple[str, str]] = set()  # shared resources only: a few thousand at most
    for path in files(paths):
        for group in file_groups(path):
            head = group[0]
            if len(group) == 1 and head["resourceType"] in KEYED_TYPES and head["resourceType"] != "Patient" \
                    and not path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl")):
                key = (head["resourceType"], head["id"])
                if key in seen:
                    continue
                seen.add(key)
            yield group


def count(paths: Iterable[str | Path]) -> int:
    """How many resources the files hold (lines of NDJSON, entries of Bundles), for the progress bar."""
    total = 0
    for path in files(paths):
        if path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl")):
            with _open(path) as fh:
                total += sum(1 for line in fh if line.strip())
        else:
            with _open(path) as fh:
                try:
                    data = orjson.loads(fh.read())
                except orjson.JSONDecodeError:
                    continue
            total += len(data.get("entry") or []) if isinstance(data, dict) and \
                data.get("resourceType") == "Bundle" else 1
    return total
