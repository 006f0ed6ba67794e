"""Routes of the scheduling operations: Appointment/$find, $hold, $book, and [id]/$hold, $book, $reschedule,
$cancel, $noshow. Parameters in (a Parameters body; $find also a GET query; $hold/$book also a bare Appointment),
a Bundle or the Appointment out; errors are OperationOutcomes."""

from __future__ import annotations

from flask import Blueprint, request

from fhirserver.api import context
from fhirserver.api.bodies import json_body
from fhirserver.api.cors import add_cors_headers
from fhirserver.api.negotiation import check_accept
from fhirserver.api.render import render
from fhirserver.operations import book, find, hold
from fhirserver.operations.find import Params

scheduling = Blueprint("scheduling", __name__, url_prefix="/fhir")
scheduling.before_request(check_accept)
scheduling.after_request(add_cors_headers)


def _params(bare_appointment: bool = False) -> Params:
    """The operation's parameters: the Parameters body (or a bare Appointment), plus query parameters of a GET."""
    if request.method == "GET":
        return find.query_parameters(list(request.args.items(multi=True)))
    body = json_body()
    if bare_appointment and isinstance(body, dict) and body.get("resourceType") == "Appointment":
        return [("appointment-resource", body)]
    return find.parameters(body)


@scheduling.route("/Appointment/$find", methods=["GET", "POST"])
def find_route():
    guard = context.guard()
    settings = context.settings()
    return render(find.find(context.store(), settings.base_url, _params(), settings.page_size, settings.page_max,
                            guard))


@scheduling.post("/Appointment/$hold")
@scheduling.post("/Appointment/<rid>/$hold")
def hold_route(rid: str | None = None):
    guard = context.guard()
    settings = context.settings()
    params = _params(True) if rid is None or request.content_length else []
    return render(hold.hold(context.store(), settings.base_url, params, settings.hold_minutes, rid, guard))


@scheduling.post("/Appointment/$book")
@scheduling.post("/Appointment/<rid>/$book")
def book_route(rid: str | None = None):
    guard = context.guard()
    params = _params(True) if rid is None or request.content_length else []
    return render(book.book(context.store(), context.settings().base_url, params, rid, guard))


@scheduling.post("/Appointment/<rid>/$reschedule")
def reschedule_route(rid: str):
    guard = context.guard()
    return render(book.reschedule(context.store(), context.settings().base_url, rid, _params(), guard))


@scheduling.post("/Appointment/<rid>/$cancel")
def cancel_route(rid: str):
    guard = context.guard()
    settings = context.settings()
    return render(book.cancel(context.store(), settings.base_url, rid, _params(), settings.late_cancel_hours, guard))


@scheduling.post("/Appointment/<rid>/$noshow")
def noshow_route(rid: str):
    guard = context.guard()
    return render(book.noshow(context.store(), context.settings().base_url, rid, guard))
