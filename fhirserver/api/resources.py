"""Routes of the REST interactions on resources: read, vread, create, update, patch, delete, history, bundles."""

from __future__ import annotations

from flask import Response, request

from fhirserver import fhirjson
from fhirserver.api import context, fhir
from fhirserver.api.bodies import JSON_PATCH, body_media_type, etag_version, json_body, prefer_return
from fhirserver.api.render import render
from fhirserver.errors import BadRequest, NotFound, PreconditionFailed
from fhirserver.interactions import create, delete, history, read, search, transaction, update
from fhirserver.interactions.patch import apply_fhirpath_patch, apply_json_patch
from fhirserver.interactions.result import Result, http_date
from fhirserver.operations import validate
from fhirserver.resources.validation import SUPPORTED_TYPES, check_type
from fhirserver.search.conditional import matching
from fhirserver.search.extract import COMPARTMENTS


def _base() -> str:
    return context.settings().base_url


def _query() -> str:
    return request.query_string.decode("utf-8", "replace")


def _not_modified(result: Result) -> Response | None:
    """304 when If-None-Match or If-Modified-Since says the client has this version."""
    stored = result.stored
    if stored is None:
        return None
    etag = f'W/"{stored.version}"'
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        if "*" in tags or etag in tags or f'"{stored.version}"' in tags:
            return Response(status=304, headers={"ETag": etag, "Last-Modified": http_date(stored.ts)})
        return None
    ims = request.if_modified_since
    if ims is not None and stored.ts.replace(microsecond=0, tzinfo=ims.tzinfo) <= ims:
        return Response(status=304, headers={"ETag": etag, "Last-Modified": http_date(stored.ts)})
    return None


@fhir.get("/<rtype>/<rid>")
def read_route(rtype: str, rid: str):
    check_type(rtype)
    result = read.read(context.store(), rtype, rid, context.guard())
    return _not_modified(result) or render(result)


@fhir.get("/<rtype>/<rid>/_history/<vid>")
def vread_route(rtype: str, rid: str, vid: str):
    check_type(rtype)
    result = read.vread(context.store(), rtype, rid, vid, context.guard())
    return _not_modified(result) or render(result)


def _history(rtype: str | None = None, rid: str | None = None):
    settings = context.settings()
    result = history.history(context.store(), _base(), request.args.to_dict(), settings.page_size,
                             settings.page_max, rtype, rid, context.guard())
    return render(result)


@fhir.get("/_history")
def system_history_route():
    return _history()


@fhir.get("/<rtype>/_history")
def type_history_route(rtype: str):
    check_type(rtype)
    return _history(rtype)


@fhir.get("/<rtype>/<rid>/_history")
def instance_history_route(rtype: str, rid: str):
    check_type(rtype)
    return _history(rtype, rid)


@fhir.post("/<rtype>")
def create_route(rtype: str):
    check_type(rtype)
    result = create.create(context.store(), _base(), rtype, json_body(), request.headers.get("If-None-Exist"),
                           guard=context.guard())
    return render(result, prefer_return())


@fhir.put("/<rtype>/<rid>")
def update_route(rtype: str, rid: str):
    check_type(rtype)
    result = update.update(context.store(), _base(), rtype, rid, json_body(), etag_version("If-Match"),
                           guard=context.guard())
    return render(result, prefer_return())


@fhir.put("/<rtype>")
def conditional_update_route(rtype: str):
    check_type(rtype)
    result = update.conditional_update(context.store(), _base(), rtype, _query(), json_body(),
                                       etag_version("If-Match"), context.guard())
    return render(result, prefer_return())


def _patched(rtype: str, rid: str) -> dict:
    """The current resource with the request's patch applied (JSON Patch or FHIRPath Patch)."""
    current = read.read(context.store(), rtype, rid, context.guard()).stored
    assert current is not None and current.text is not None
    resource = fhirjson.loads(current.text)
    if body_media_type() == JSON_PATCH:
        return apply_json_patch(resource, json_body((JSON_PATCH,)))
    body = json_body()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("PATCH takes a JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters "
                         "resource (application/fhir+json)")
    return apply_fhirpath_patch(resource, body)


@fhir.patch("/<rtype>/<rid>")
def patch_route(rtype: str, rid: str):
    check_type(rtype)
    patched = _patched(rtype, rid)
    if patched.get("id") != rid:
        raise BadRequest("a patch must not change the resource's id", expression=[f"{rtype}.id"])
    result = update.update(context.store(), _base(), rtype, rid, patched, etag_version("If-Match"), method="PATCH",
                           guard=context.guard())
    return render(result, prefer_return())


@fhir.patch("/<rtype>")
def conditional_patch_route(rtype: str):
    check_type(rtype)
    found = matching(context.store(), rtype, _query(), limit=2, visible=context.guard().reachable("search", rtype))
    if not found:
        raise NotFound(f"conditional patch {rtype}?{_query()} matches nothing")
    if len(found) > 1:
        raise PreconditionFailed(f"conditional patch {rtype}?{_query()} matches more than one resource")
    return patch_route(rtype, found[0].id)


@fhir.delete("/<rtype>/<rid>")
def delete_route(rtype: str, rid: str):
    check_type(rtype)
    return render(delete.delete(context.store(), rtype, rid, etag_version("If-Match"), context.guard()))


@fhir.delete("/<rtype>")
def conditional_delete_route(rtype: str):
    check_type(rtype)
    return render(delete.conditional_delete(context.store(), rtype, _query(), guard=context.guard()))


@fhir.post("/")
@fhir.post("")
def bundle_route():
    bundle = json_body()
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base takes a Bundle of type transaction or batch", expression=["resourceType"])
    kind = bundle.get("type")
    store, base, guard = context.store(), _base(), context.guard()
    if kind == "transaction":
        body = transaction.Transaction(store, base, _get_entry, guard).run(bundle)
    elif kind == "batch":
        body = transaction.batch(store, base, bundle, _get_entry,
                                 lambda e: transaction.run_single(store, base, e, guard))
    else:
        raise BadRequest(f"a Bundle of type {kind!r} cannot be processed here; post a transaction or a batch",
                         expression=["Bundle.type"])
    return render(Result(200, body=body))


def _get_entry(method: str, rtype: str, path: str | None, query: str) -> Result:
    """A GET entry of a batch or transaction: read, vread, history or search."""
    store, guard = context.store(), context.guard()
    if rtype and path:
        parts = path.split("/")
        check_type(rtype)
        if len(parts) == 1:
            return read.read(store, rtype, parts[0], guard)
        if len(parts) == 3 and parts[1] == "_history":
            return read.vread(store, rtype, parts[0], parts[2], guard)
    check_type(rtype)
    return search.search(store, _base(), rtype, query, _paging(), guard=guard)


def _strict() -> bool:
    return any(p.strip().lower() == "handling=strict" for p in request.headers.get("Prefer", "").split(","))


def _paging() -> search.Paging:
    settings = context.settings()
    return search.Paging(settings.page_size, settings.page_max)


def _pairs() -> list[tuple[str, str]]:
    """Query parameters, plus the form body of a POST _search."""
    pairs = list(request.args.items(multi=True))
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise BadRequest("POST _search takes an application/x-www-form-urlencoded body")
        pairs += list(request.form.items(multi=True))
    return pairs


@fhir.get("/<rtype>")
@fhir.post("/<rtype>/_search")
def search_route(rtype: str):
    check_type(rtype)
    return render(search.search(context.store(), _base(), rtype, _pairs(), _paging(), _strict(),
                                guard=context.guard()))


@fhir.get("/<ctype>/<cid>/<rtype>")
def compartment_search_route(ctype: str, cid: str, rtype: str):
    check_type(ctype)
    check_type(rtype)
    if ctype not in COMPARTMENTS:
        raise NotFound(f"{ctype} is not a compartment (these are: {', '.join(COMPARTMENTS)})")
    return render(search.search(context.store(), _base(), rtype, _pairs(), _paging(), _strict(), (ctype, cid),
                                context.guard()))


@fhir.get("/")
@fhir.get("")
@fhir.post("/_search")
def system_search_route():
    types = sorted(SUPPORTED_TYPES)
    return render(search.system_search(context.store(), _base(), _pairs(), _paging(), types, _strict(),
                                       context.guard()))


def _validate(rtype: str, rid: str | None):
    check_type(rtype)
    body = json_body() if request.method == "POST" else None
    return render(validate.validate(context.store(), rtype, body, rid, request.args.get("mode"), context.guard()))


@fhir.route("/<rtype>/$validate", methods=["POST"])
def type_validate_route(rtype: str):
    return _validate(rtype, None)


@fhir.route("/<rtype>/<rid>/$validate", methods=["GET", "POST"])
def instance_validate_route(rtype: str, rid: str):
    return _validate(rtype, rid)
