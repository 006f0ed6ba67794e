"""pytest plugin: every FHIR resource and Bundle the server returns during the run goes through HAPI's validator.

It wraps ``requests.adapters.HTTPAdapter.send``: each response with Content-Type ``application/fhir+json`` or
``application/json`` whose body is a JSON object with ``resourceType`` is kept (304s, empty bodies and non-FHIR JSON
such as ``/healthz`` are skipped; identical bodies are validated once). A background thread sends the distinct
bodies to one long-lived HAPI ``FhirInstanceValidator`` (``conformance.validator.Validator``) while the tests run,
and the rest at the end. Then it prints a summary (bodies, time, throughput, issues counted per message), writes
``.local/validator-report.json`` and fails the run if any issue has severity error or fatal, printing the request
and the issues of each offending body. Errors matching an entry of ``ALLOWED_ERRORS`` are reported, not failed.

Switch: ``FHIR_VALIDATE=0`` turns it off (quick local runs); it is on by default and in CI. ``FHIR_VALIDATE_REPORT``
names another report file.
Limits: bodies larger than ``FHIR_VALIDATE_MAX_BYTES`` (default 2000000) are listed, not validated, and a body whose
validation takes longer than ``FHIR_VALIDATE_TIMEOUT`` seconds (default 120) is listed and the JVM restarted: HAPI's
InstanceValidator is quadratic in the number of messages, so a huge Bundle (the 35 MB examples of the spec, echoed
back by the server) can keep it busy for many minutes.
Use: ``pytest_plugins = ["tests.validator_plugin"]`` in conftest.py, or ``pytest -p tests.validator_plugin``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests.adapters

from conformance import validator as harness

SWITCH = "FHIR_VALIDATE"
MAX_BYTES = int(os.environ.get("FHIR_VALIDATE_MAX_BYTES", "2000000"))
TIMEOUT = float(os.environ.get("FHIR_VALIDATE_TIMEOUT", "120"))
REPORT = Path(os.environ.get("FHIR_VALIDATE_REPORT") or harness.REPO / ".local" / "validator-report.json")
FHIR_CONTENT_TYPES = frozenset({"application/fhir+json", "application/json"})
PRINT_ERROR_BODIES = 25
PRINT_MESSAGES = 40


@dataclass(frozen=True)
class Allowance:
    """A kind of error the validator reports that is not the server's fault, with the reason why.

    Each field is a regular expression searched in one property of the error; empty matches anything. All given
    fields must match."""

    reason: str
    message: str = ""  # the issue's message
    code: str = ""  # the issue's code (HAPI's message id)
    location: str = ""  # the issue's location (FHIRPath-like, as HAPI gives it)
    test: str = ""  # the node id of the test during which the response was received
    url: str = ""  # the request URL


# Keep this list short: every entry hides a class of errors and must say why that is right. Allowed errors are still
# counted and printed in the summary and the report ("allowed errors").
ALLOWED_ERRORS: tuple[Allowance, ...] = (
    Allowance(
        reason="HL7's own R4 examples, stored and echoed back unchanged (test_examples.py asserts the byte-exact "
               "round trip): their known flaws (XHTML '#' links that do not resolve, StructureDefinitions whose "
               "snapshot cannot be generated, relative canonicals, v3-orderableDrugForm codes in the wrong case, "
               "...) are HL7's, not the server's. Not allowed: the fields the server sets (id, meta.versionId, "
               "meta.lastUpdated) and the OperationOutcomes it builds.",
        test=r"^tests/test_examples\.py::",
        location=r"^(?!OperationOutcome)(?!.*\.meta\.(versionId|lastUpdated)\b)(?!(\w+\.)?id$)",
    ),
    Allowance(
        reason="HAPI reads R4 ResearchElementDefinition.characteristic.studyEffectiveDescription (and "
               "participantEffectiveDescription), plain string elements, as a value of the choice studyEffective[x] "
               "of type 'Description', then finds a second value (studyEffectiveDateTime) or two matching slices: "
               "a validator false positive on valid R4 (checked with a minimal instance).",
        url=r"/ResearchElementDefinition\b",
        location=r"\.characteristic\[\d+\]",
        message=r"Element matches more than one slice|Unrecognized property '(study|participant)Effective",
    ),
    Allowance(
        reason="HAPI's offline terminology check of a CodeableConcept with a required binding and two or more "
               "codings answers 'None of the codings provided are in the value set' even when one of them is "
               "(condition-clinical#active next to a SNOMED CT or a condition-ver-status coding: checked with minimal "
               "instances), and calls an unknown code system an error there. R4 asks for one coding from the value "
               "set; the others are translations. test_conformance_fixes.py sends such a concept on purpose.",
        test=r"^tests/test_conformance_fixes\.py::test_required_codeable_concept_",
        code=r"^(Terminology_TX_NoValid_1_CC|Terminology_PassThrough_TX_Message)$",
    ),
    Allowance(
        reason="per-1 (Period start <= end) at mixed precisions: HAPI fails it whenever start and end differ in "
               "precision (start 2020, end 2020-03-01 fails: the FHIRPath comparison is empty, which HAPI counts as "
               "false), and test_search_property.py mixes precisions on purpose while keeping start <= end "
               "(gen_period sorts by date range).",
        test=r"^tests/test_search_property\.py::",
        message=r"^Constraint failed: per-1:",
    ),
    Allowance(
        reason="A flaw of the R4 specification itself: ExplanationOfBenefit.priority is bound to the CodeSystem URL "
               "http://terminology.hl7.org/CodeSystem/processpriority instead of a ValueSet, so HAPI flags every "
               "instance that has the element.",
        message=r"^Found a reference to a CodeSystem 'http://terminology\.hl7\.org/CodeSystem/processpriority' "
                r"where a ValueSet belongs",
    ),
    Allowance(
        reason="test_capability_walk.py's synthetic definitional resources (StructureDefinition, SearchParameter, "
               "OperationDefinition, CodeSystem, ImplementationGuide, Questionnaire, StructureMap) break the "
               "semantic rules HAPI checks for conformance resources (a composite SearchParameter without "
               "components, a type 'http://example.org/walk', ...): a FHIR server stores them without evaluating "
               "those rules, and the walk fills them with placeholder values by design.",
        test=r"^tests/test_capability_walk\.py::",
        code=r"^(OPDEF_|SEARCHPARAMETER_|SD_|CODESYSTEM_|IG_|ED_SEARCH_|Questionnaire_Q_|SM_)",
    ),
    Allowance(
        reason="test_capability_walk.py's instances are generated from the element definitions alone: the 'rich' "
               "ones put a value in every element, so both sides of either-or invariants are filled (obs-6, cpl-3, "
               "fhs-1, ...), and the minimal ones only the required elements, so neither side of others is (org-1, "
               "ppc-1, ...). The server does not evaluate R4 invariants on write (FHIRPath over every resource "
               "written; not done). Only inside the stored instances: not in /metadata, not in OperationOutcomes, "
               "not in the parts of Bundles the server builds around them.",
        test=r"^tests/test_capability_walk\.py::",
        url=r"^(?!.*/metadata\b)",
        location=r"^(?!OperationOutcome)(?!Bundle\.(?!entry\[\d+\]\.resource))",
        message=r"^Constraint failed: ",
    ),
    Allowance(
        reason="test_capability_walk.py's minimal StructureDefinition (url, name, status, kind, abstract, type: the "
               "required elements only) has neither differential nor snapshot (sdf-6, a test-data flaw like the "
               "others above), and HAPI's validator crashes on it (NullPointerException in snapshot handling) "
               "instead of reporting it.",
        test=r"^tests/test_capability_walk\.py::",
        url=r"/StructureDefinition\b",
        code=r"^harness-exception$",
        message=r"^java\.lang\.NullPointerException: ",
    ),
    Allowance(
        reason="The walk keeps walking Evidence with an R4B-shaped instance (R4B_FALLBACK) after the R4 one is "
               "refused: the server validates with fhir.resources' R4B models, whose Evidence was redesigned (R4 "
               "Evidence and EvidenceVariable are refused; known bugs, xfailed in the walk). That cannot be fixed "
               "without R4 models for these two types (no pydantic-v2 release models R4 4.0.1). HAPI, validating "
               "against R4, rightly rejects what was stored.",
        test=r"^tests/test_capability_walk\.py::",
        message=r"^Unrecognized property 'variableDefinition'$|^Evidence\.exposureBackground: minimum required = 1, "
                r"but only found 0 ",
    ),
    Allowance(
        reason="MolecularSequence.structureVariant.variantType is bound (required) to the LOINC answer list "
               "LL379-9, which the offline validator cannot expand (no LOINC): it reports a correct answer code "
               "(LA6692-3 Deletion) as not in the value set.",
        code=r"^Terminology_TX_NoValid_1_CC$",
        message=r"http://loinc\.org/vs/LL379-9\b",
    ),
)


@dataclass
class Captured:
    """One distinct response body and where it was first seen."""

    digest: str
    body: bytes
    method: str
    url: str
    status: int
    test: str | None
    resource_type: str
    size: int = 0
    times_seen: int = 1


@dataclass
class Validated:
    """A captured body with the validator's verdict."""

    captured: Captured
    issues: list[dict[str, Any]]
    seconds: float
    cpu_ms: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    allowed: list[tuple[dict[str, Any], Allowance]] = field(default_factory=list)


_QUOTED = re.compile(r"(?<!\w)'[^']*'(?!\w)|\"[^\"]*\"")
_INDEX = re.compile(r"\[\d+\]")
_NUMBER = re.compile(r"(?<![\w.])\d+(\.\d+)?(?![\w.])")


def message_template(issue: dict[str, Any]) -> str:
    """The issue's message with quoted values, indexes and numbers blanked, so that alike issues count together."""
    text = _QUOTED.sub("'…'", issue.get("message") or "")
    text = _NUMBER.sub("N", _INDEX.sub("[N]", text))
    return f"{issue.get('code') or '-'}: {text}"


def _allowance(issue: dict[str, Any], captured: Captured) -> Allowance | None:
    """The first entry of ``ALLOWED_ERRORS`` that matches the issue, if any."""
    subject = {"message": issue.get("message") or "", "code": issue.get("code") or "",
               "location": issue.get("location") or "",
               "test": captured.test or "", "url": captured.url}
    for entry in ALLOWED_ERRORS:
        if all(not getattr(entry, key) or re.search(getattr(entry, key), value) for key, value in subject.items()):
            return entry
    return None


class ValidationCollector:
    """Captures the server's FHIR responses, validates them in the background and judges the run."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Captured | None] = queue.Queue()
        self.lock = threading.Lock()  # guards seen/results; held only briefly (capture runs in test threads)
        self.start_lock = threading.Lock()  # guards the slow build and start of the JVM
        self.seen: dict[str, Captured] = {}
        self.skipped: Counter[str] = Counter()
        self.results: list[Validated] = []
        self.unparsable: list[Captured] = []
        self.too_large: list[Captured] = []
        self.timed_out: list[Captured] = []
        self.restarts = 0
        self.abandoned = 0
        self.abandon = False
        self.current_test: str | None = None
        self.validator: harness.Validator | None = None
        self.failure: str | None = None
        self.start_seconds: float | None = None
        self.warmup_seconds: float | None = None
        self.build_seconds: float | None = None
        self.tests_ended: float | None = None
        self.drain_seconds: float = 0.0
        self.workers: list[threading.Thread] = []
        self._original_send = None
        self._summary: dict[str, Any] | None = None

    # -- capture -----------------------------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap ``HTTPAdapter.send`` so that every response passes by :meth:`capture`."""
        original = requests.adapters.HTTPAdapter.send
        collector = self

        def send(adapter: requests.adapters.HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            response = original(adapter, request, *args, **kwargs)
            try:
                collector.capture(request, response, bool(kwargs.get("stream")))
            except Exception as exc:  # noqa: BLE001 - capturing must never break a test
                collector._skip(f"capture failed: {type(exc).__name__}")
            return response

        self._original_send = original
        requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign]
        self._start_worker()

    def uninstall(self) -> None:
        if self._original_send is not None:
            requests.adapters.HTTPAdapter.send = self._original_send  # type: ignore[method-assign]
            self._original_send = None

    def _skip(self, reason: str) -> None:
        with self.lock:
            self.skipped[reason] += 1

    def capture(self, request: Any, response: requests.Response, stream: bool) -> None:
        """Keep the response's body if it is FHIR JSON not seen before."""
        if response.status_code == 304:
            self._skip("304 Not Modified")
            return
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in FHIR_CONTENT_TYPES:
            self._skip("not JSON")
            return
        if stream:
            self._skip("streamed (not read)")
            return
        body = response.content
        if not body or not body.strip():
            self._skip("empty body")
            return
        digest = hashlib.sha1(body).hexdigest()
        with self.lock:
            known = self.seen.get(digest)
            if known is not None:
                known.times_seen += 1
                return
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
            unparsable = True
        else:
            unparsable = False
        if not unparsable and not (isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str)):
            self._skip("JSON without resourceType")
            return
        item = Captured(digest=digest, body=body, method=request.method, url=request.url,
                        status=response.status_code, test=self.current_test,
                        resource_type=parsed["resourceType"] if parsed else "(not JSON)", size=len(body))
        with self.lock:
            if digest in self.seen:
                self.seen[digest].times_seen += 1
                return
            self.seen[digest] = item
            if unparsable:
                self.unparsable.append(item)
                return
            if len(body) > MAX_BYTES:
                self.too_large.append(item)
                item.body = b""
                return
        self.queue.put(item)

    # -- validation --------------------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._work, name="fhir-validate", daemon=True)
        worker.start()
        self.workers.append(worker)

    def _ensure_validator(self) -> harness.Validator:
        with self.start_lock:
            if self.validator is not None:
                return self.validator
            began = time.monotonic()
            harness.build()
            self.build_seconds = time.monotonic() - began
            validator = harness.Validator()
            self.start_seconds = validator.start()
            self.warmup_seconds = validator.warm_up()
            self.validator = validator
            return validator

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.failure or self.abandon:
                self.abandoned += 1
                continue
            self._validate(item)

    def _validate(self, item: Captured) -> None:
        for attempt in (1, 2):
            try:
                validator = self._ensure_validator()
                began = time.monotonic()
                result = validator.check(item.body, timeout=TIMEOUT)
                seconds = time.monotonic() - began
            except harness.ValidatorTimeout:
                self.timed_out.append(item)
                self._discard(validator)
                return
            except harness.ValidatorError as exc:
                if self.abandon:
                    self.abandoned += 1
                    return
                if attempt == 1 and validator is not self.validator:
                    continue  # another worker restarted the JVM under this request: try again on the new one
                self.failure = f"{type(exc).__name__}: {exc}"
                return
            except Exception as exc:  # noqa: BLE001 - reported as a failure of the run
                self.failure = f"{type(exc).__name__}: {exc}"
                return
            done = Validated(captured=item, issues=result.issues, seconds=seconds, cpu_ms=result.cpu_ms)
            for issue in result.issues:
                if issue.get("severity") in harness.ERROR_SEVERITIES:
                    allowed = _allowance(issue, item)
                    if allowed is None:
                        done.errors.append(issue)
                    else:
                        done.allowed.append((issue, allowed))
            item.body = b""  # keep memory flat; the report keeps what matters
            with self.lock:
                self.results.append(done)
            return

    def _discard(self, validator: harness.Validator) -> None:
        """Stop a JVM stuck in a validation; the next body starts a fresh one."""
        with self.start_lock:
            if self.validator is validator:
                self.validator = None
                self.restarts += 1
        validator.close()

    def finish(self, interrupted: bool = False) -> None:
        """Validate what is still queued (with one more worker thread), then stop the JVM.

        An interrupted run (Ctrl-C) does not wait: the JVM is stopped and the queue dropped."""
        self.tests_ended = time.monotonic()
        self.uninstall()
        if interrupted:
            self.abandon = True
            if self.validator is not None:
                self.validator.close()
        elif self.queue.qsize() > 1:
            self._start_worker()
        for _ in self.workers:
            self.queue.put(None)
        for worker in self.workers:
            worker.join()
        self.drain_seconds = time.monotonic() - self.tests_ended
        if self.validator is not None:
            self.validator.close()

    # -- judgement ---------------------------------------------------------------------------------------------

    def summarize(self) -> dict[str, Any]:
        """Counts, timings and the issues grouped by message; written to the report file."""
        if self._summary is not None:
            return self._summary
        by_severity: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for done in self.results:
            for issue in done.issues:
                severity = issue.get("severity") or "error"
                allowed = _allowance(issue, done.captured) if severity in harness.ERROR_SEVERITIES else None
                if allowed is not None:
                    severity = "allowed-error"
                group = by_severity[severity].setdefault(message_template(issue), {
                    "count": 0, "bodies": set(), "examples": Counter(), "example_url": {}, "reason": None})
                group["count"] += 1
                group["bodies"].add(done.captured.digest)
                group["examples"][issue.get("message")] += 1
                group["example_url"].setdefault(issue.get("message"), {
                    "url": f"{done.captured.method} {done.captured.url}", "status": done.captured.status,
                    "location": issue.get("location"), "test": done.captured.test})
                if allowed is not None:
                    group["reason"] = allowed.reason

        def groups(severity: str) -> list[dict[str, Any]]:
            out = []
            for template, g in sorted(by_severity.get(severity, {}).items(), key=lambda kv: -kv[1]["count"]):
                out.append({"message": template, "count": g["count"], "bodies": len(g["bodies"]),
                            **({"allowed_because": g["reason"]} if g["reason"] else {}),
                            "examples": [{"message": m, "count": n, **g["example_url"][m]}
                                         for m, n in g["examples"].most_common(5)]})
            return out

        busy = sum(d.seconds for d in self.results)
        cpu = sum(d.cpu_ms for d in self.results)
        slowest = sorted(self.results, key=lambda d: -d.seconds)[:10]
        error_bodies = [d for d in self.results if d.errors]
        self._summary = {
            "hapi_version": harness.HAPI_VERSION,
            "failure": self.failure,
            "responses_captured": sum(c.times_seen for c in self.seen.values()),
            "bodies_distinct": len(self.seen),
            "bodies_validated": len(self.results),
            "skipped": dict(self.skipped),
            "not_validated_too_large": [{"request": f"{c.method} {c.url}", "status": c.status, "test": c.test,
                                         "resourceType": c.resource_type, "bytes": c.size} for c in self.too_large],
            "not_validated_timed_out": [{"request": f"{c.method} {c.url}", "status": c.status, "test": c.test,
                                         "resourceType": c.resource_type, "bytes": c.size}
                                        for c in self.timed_out],
            "not_validated_interrupted": self.abandoned,
            "jvm_restarts": self.restarts,
            "build_seconds": self.build_seconds,
            "jvm_start_seconds": self.start_seconds,
            "warmup_seconds": self.warmup_seconds,
            "validation_busy_seconds": round(busy, 2),
            "bodies_per_second_busy": round(len(self.results) / busy, 1) if busy else None,
            "jvm_cpu_ms_per_body": round(cpu / len(self.results), 2) if self.results else None,
            "seconds_waited_after_tests": round(self.drain_seconds, 2),
            "resource_types": dict(Counter(d.captured.resource_type for d in self.results).most_common()),
            "errors": groups("error") + groups("fatal"),
            "allowed_errors": groups("allowed-error"),
            "warnings": groups("warning"),
            "information": groups("information"),
            "bodies_with_errors": [{
                "request": f"{d.captured.method} {d.captured.url}", "status": d.captured.status,
                "test": d.captured.test, "resourceType": d.captured.resource_type, "errors": d.errors}
                for d in error_bodies],
            "unparsable_bodies": [{"request": f"{c.method} {c.url}", "status": c.status, "test": c.test}
                                  for c in self.unparsable],
            "slowest": [{"request": f"{d.captured.method} {d.captured.url}", "seconds": round(d.seconds, 3),
                         "cpu_ms": d.cpu_ms, "resourceType": d.captured.resource_type} for d in slowest],
        }
        return self._summary

    def failed(self) -> bool:
        s = self.summarize()
        return bool(s["failure"] or s["bodies_with_errors"] or s["unparsable_bodies"])

    def write_report(self) -> Path:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_bytes(orjson.dumps(self.summarize(), option=orjson.OPT_INDENT_2))
        return REPORT

    def print_summary(self, tr: Any) -> None:
        s = self.summarize()
        tr.write_sep("=", f"FHIR validation (HAPI {s['hapi_version']} FhirInstanceValidator)")

        def secs(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}s"

        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped"].items())) or "none"
        tr.write_line(f"validated {s['bodies_validated']} distinct bodies of {s['responses_captured']} FHIR responses "
                      f"(skipped {skipped})")
        tr.write_line(f"JVM start {secs(s['jvm_start_seconds'])}, warm-up {secs(s['warmup_seconds'])}, "
                      f"validating {secs(s['validation_busy_seconds'])} busy = {s['bodies_per_second_busy']} bodies/s "
                      f"({s['jvm_cpu_ms_per_body']} ms JVM CPU per body); "
                      f"waited {secs(s['seconds_waited_after_tests'])} after the tests")
        for title, key in (("errors", "errors"), ("allowed errors", "allowed_errors"), ("warnings", "warnings")):
            items = s[key]
            if not items:
                continue
            tr.write_line(f"{title} by message ({sum(i['count'] for i in items)} in total):")
            for item in items[:PRINT_MESSAGES]:
                tr.write_line(f"  {item['count']:6d} in {item['bodies']:5d} bodies  {item['message'][:240]}")
            if len(items) > PRINT_MESSAGES:
                tr.write_line(f"  … {len(items) - PRINT_MESSAGES} more in the report")
        for c in s["not_validated_too_large"]:
            tr.write_line(f"not validated, {c['bytes']} bytes > {MAX_BYTES}: {c['request']} ({c['test']})", yellow=True)
        for c in s["not_validated_timed_out"]:
            tr.write_line(f"not validated, over {TIMEOUT:.0f}s ({c['bytes']} bytes): {c['request']} ({c['test']})",
                          yellow=True)
        if s["failure"]:
            tr.write_line(f"the validator failed: {s['failure']}", red=True, bold=True)
        for c in s["unparsable_bodies"]:
            tr.write_line(f"not JSON although declared so: {c['request']} -> {c['status']} ({c['test']})", red=True)
        bodies = s["bodies_with_errors"]
        for body in bodies[:PRINT_ERROR_BODIES]:
            tr.write_line(f"{body['request']} -> {body['status']} {body['resourceType']} ({body['test']})", red=True)
            for issue in body["errors"][:10]:
                tr.write_line(f"    {issue['severity']} {issue['location']}: {issue['message'][:300]}")
        if len(bodies) > PRINT_ERROR_BODIES:
            tr.write_line(f"… {len(bodies) - PRINT_ERROR_BODIES} more bodies with errors in the report")
        tr.write_line(f"report: {REPORT}")
        if self.failed():
            tr.write_line(f"FHIR validation FAILED: {len(bodies)} response bodies with errors", red=True, bold=True)

    # -- pytest hooks ------------------------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        self.current_test = item.nodeid
        try:
            return (yield)
        finally:
            self.current_test = None

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.finish(interrupted=session.exitstatus == pytest.ExitCode.INTERRUPTED)
        if self.results or self.failure or self.unparsable:
            self.write_report()
        if self.failed() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.seen or self.failure:
            self.print_summary(terminalreporter)

    def pytest_unconfigure(self) -> None:
        self.uninstall()
        if self.validator is not None:
            self.validator.close()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(SWITCH, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    collector = ValidationCollector()
    config.pluginmanager.register(collector, "fhir-validation-collector")
    collector.install()
