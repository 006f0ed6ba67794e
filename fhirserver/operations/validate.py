"""$validate at type and instance level (modes create, update, delete): an OperationOutcome of what is wrong.

The answer is 200 with the issues found (an `information` issue when there are none): the operation itself
succeeded; whether the resource is valid is in the outcome.
"""

from __future__ import annotations

from fhirserver.errors import BadRequest, FHIRError, Issue
from fhirserver.interactions.guard import OPEN, Guard
from fhirserver.interactions.result import Result
from fhirserver.resources.validation import validate_resource
from fhirserver.store.database import Store

MODES = ("create", "update", "delete")


def _arguments(body: object) -> tuple[object, str | None]:
    """The resource and mode from a Parameters body, or the body itself as the resource."""
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource, mode = None, None
        for p in body.get("parameter") or []:
            if not isinstance(p, dict):
                continue
            if p.get("name") == "resource":
                resource = p.get("resource")
            elif p.get("name") == "mode":
                mode = p.get("valueCode") or p.get("valueString")
        return resource, mode
    return body, None


def validate(store: Store, rtype: str, body: object, rid: str | None = None, mode: str | None = None,
             guard: Guard = OPEN) -> Result:
    """Check `body` as a resource of `rtype` for `mode`; with `rid`, as that instance.

    The token must be allowed to write the type (what is validated is what it could create or update), and to
    read the instance when one is named.
    """
    if not (guard.allows("create", rtype) or guard.allows("update", rtype)):
        guard.require("update", rtype)
    if rid is not None:
        guard.check_existing(store, "read", rtype, rid)
    resource, body_mode = _arguments(body)
    mode = mode or body_mode
    if mode is not None and mode not in MODES:
        raise BadRequest(f"mode {mode!r} is not one of {', '.join(MODES)}", expression=["mode"])
    issues: list[Issue] = []
    if mode == "delete":
        if rid is None:
            raise BadRequest("mode=delete needs an instance: [type]/[id]/$validate")
        current = store.reader.current(rtype, rid)
        if current is None or current.deleted:
            issues.append(Issue("not-found", f"{rtype}/{rid} does not exist to be deleted"))
    else:
        if resource is None:
            raise BadRequest("$validate needs a resource (the body, or a Parameters with a 'resource' parameter)")
        id_rule = "required" if mode == "update" else "any"
        try:
            issues = validate_resource(resource, resource_type=rtype, resource_id=rid, id_rule=id_rule)
        except FHIRError as exc:
            issues = exc.issues
    if not issues:
        issues = [Issue("informational", "No issues found", severity="information")]
    return Result(200, body={"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]})
