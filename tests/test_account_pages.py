"""Account self-service pages over real HTTP (FHIR_AUTH=on, real FerretDB): forgotten password -> reset link in the
outbox -> new password; bad, used and expired links; CSRF; TOTP enrolment, second factor at sign-in, recovery codes
and turning the factor off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
import requests
from pymongo import MongoClient
from pymongo.database import Database

from smart_auth.store import AuthStore
from smart_auth.users import UserStore
from tests.servers import ServerProcess, serve
from tests.smart_helpers import PASSWORD, Browser, text_of
from tests.test_users import outbox, token_from

DB_NAME = "accountpages"
NEW_PASSWORD = "a brand new passphrase 42"
SENT = "If an account with that username or e-mail address exists"


@dataclass
class World:
    server: ServerProcess
    db: Database


@pytest.fixture(scope="module")
def world(ferretdb, tmp_path_factory) -> Iterator[World]:
    client: MongoClient = MongoClient(ferretdb.uri)
    client.drop_database(DB_NAME)
    server = serve(ferretdb.uri, tmp_path_factory.mktemp("account") / "server.log", FHIR_AUTH="on",
                   FHIR_DB_NAME=DB_NAME, FHIR_SECRET_KEY="account-pages-test-secret-key-0123456789")
    try:
        yield World(server, client[DB_NAME])
    finally:
        server.stop()
        client.close()


def account(world: World, name: str, email: str | None = None) -> None:
    UserStore(world.db).create_user(name, PASSWORD, "Patient/1", email=email)


def signed_in(world: World, name: str, password: str = PASSWORD) -> Browser:
    browser = Browser(world.server.url)
    browser.go("/auth/login")
    page = browser.sign_in(name, password)
    assert page.status_code == 200 and "Apps with access" in text_of(page.text), text_of(page.text)[:300]
    return browser


def sign_in_status(world: World, name: str, password: str) -> requests.Response:
    browser = Browser(world.server.url)
    browser.go("/auth/login")
    return browser.sign_in(name, password)


def messages_for(world: World, name: str) -> list[dict]:
    return [m for m in outbox(world.db) if m["meta"].get("user") == name]


def ask_reset(world: World, who: str) -> requests.Response:
    browser = Browser(world.server.url)
    browser.go("/auth/login")
    assert browser.form_names() and "/auth/forgot" in browser.page.text  # the sign-in page links to the form
    assert browser.go("/auth/forgot").status_code == 200
    return browser.submit("username", {"username": who})


# -- password reset ---------------------------------------------------------------------------------------------------


def test_forgot_reset_sign_in_and_link_works_once(world: World):
    account(world, "rosa", "rosa@example.org")
    page = ask_reset(world, "Rosa@Example.org")
    assert page.status_code == 200 and SENT in text_of(page.text)
    [message] = messages_for(world, "rosa")
    assert message["to"] == "rosa@example.org" and message["kind"] == "password_reset"
    link = f"{world.server.url}/auth/reset?token={token_from(message)}"
    assert link in message["body"]

    browser = Browser(world.server.url)
    assert browser.go(link).status_code == 200 and {"password", "password2", "csrf", "token"} <= browser.form_names()
    page = browser.submit("password2", {"password": NEW_PASSWORD, "password2": NEW_PASSWORD + "x"})
    assert page.status_code == 422 and "not the same" in text_of(page.text)
    page = browser.submit("password2", {"password": "short", "password2": "short"})
    assert page.status_code == 422 and "at least 10 characters" in text_of(page.text)  # UserStore's own rule
    page = browser.submit("password2", {"password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert page.status_code == 200 and "Password changed" in text_of(page.text)

    assert sign_in_status(world, "rosa", PASSWORD).status_code == 422
    signed_in(world, "rosa", NEW_PASSWORD)
    # used: the GET and a POST with the same token are refused with a page, not a stack trace
    again = Browser(world.server.url)
    page = again.go(link)
    assert page.status_code == 400 and "already used or has expired" in text_of(page.text)
    again.go("/auth/forgot")
    csrf = dict(again.form("username").values())["csrf"]
    other = "yet another passphrase"
    page = again.go("/auth/reset", "POST", {"csrf": csrf, "token": token_from(message), "password": other,
                                            "password2": other})
    assert page.status_code == 400 and "Traceback" not in page.text
    signed_in(world, "rosa", NEW_PASSWORD)


def test_unknown_account_gets_the_same_answer_and_nothing_is_queued(world: World):
    account(world, "nomail")  # exists, but has no e-mail address
    before = len(outbox(world.db))
    answers = {text_of(ask_reset(world, who).text) for who in ("nobody-here", "nobody@example.org", "nomail")}
    assert len(answers) == 1 and SENT in answers.pop()
    assert len(outbox(world.db)) == before


def test_expired_and_unknown_tokens_are_400(world: World):
    account(world, "ezra", "ezra@example.org")
    ask_reset(world, "ezra")
    token = token_from(messages_for(world, "ezra")[-1])
    browser = Browser(world.server.url)
    assert browser.go(f"/auth/reset?token={token}").status_code == 200
    csrf = dict(browser.form("password").values())["csrf"]
    past = datetime.now(UTC) - timedelta(minutes=1)
    AuthStore(world.db).reset_tokens.update_many({"user": "ezra"}, {"$set": {"expires": past}})
    page = browser.go(f"/auth/reset?token={token}")
    assert page.status_code == 400 and "expired" in text_of(page.text)
    page = browser.go("/auth/reset", "POST", {"csrf": csrf, "token": token, "password": NEW_PASSWORD,
                                              "password2": NEW_PASSWORD})
    assert page.status_code == 400
    for bad in ("made-up-token", "", "x" * 300):
        page = browser.go(f"/auth/reset?token={bad}")
        assert page.status_code == 400 and "Reset link not valid" in text_of(page.text)
    assert sign_in_status(world, "ezra", NEW_PASSWORD).status_code == 422
    signed_in(world, "ezra")


def test_forms_without_csrf_are_refused(world: World):
    account(world, "cora", "cora@example.org")
    http = requests.Session()
    before = len(outbox(world.db))
    page = http.post(f"{world.server.url}/auth/forgot", data={"username": "cora"}, timeout=30)
    assert page.status_code == 400 and len(outbox(world.db)) == before
    http.get(f"{world.server.url}/auth/forgot", timeout=30)  # now with a session, but still no token
    page = http.post(f"{world.server.url}/auth/forgot", data={"username": "cora", "csrf": "0" * 64}, timeout=30)
    assert page.status_code == 400 and len(outbox(world.db)) == before

    ask_reset(world, "cora")
    token = token_from(messages_for(world, "cora")[-1])
    page = http.post(f"{world.server.url}/auth/reset", timeout=30,
                     data={"token": token, "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert page.status_code == 400
    signed_in(world, "cora")  # the password did not change ...
    assert Browser(world.server.url).go(f"/auth/reset?token={token}").status_code == 200  # ... nor was the link spent

    browser = signed_in(world, "cora")
    page = browser.go("/auth/security", "POST", {"action": "enable", "password": PASSWORD})
    assert page.status_code == 400
    assert UserStore(world.db).store.users.find_one({"_id": "cora"}).get("totp_pending") is None


# -- TOTP enrolment ---------------------------------------------------------------------------------------------------


def test_totp_enrolment_second_factor_recovery_and_disable(world: World):
    account(world, "tom", "tom@example.org")
    assert Browser(world.server.url).go("/auth/security").url.endswith("/auth/login")  # signed-in users only
    browser = signed_in(world, "tom")
    assert "/auth/security" in browser.page.text  # linked from the management page
    page = browser.go("/auth/security")
    assert page.status_code == 200 and "is off" in text_of(page.text)
    page = browser.submit("password", {"password": "not my password"})
    assert page.status_code == 422

    page = browser.submit("password", {"password": PASSWORD})
    assert page.status_code == 200
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', page.text).group(1)
    uri = re.search(r'<code id="uri">([^<]+)</code>', page.text).group(1).replace("&amp;", "&")
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    assert sign_in_status(world, "tom", PASSWORD).status_code == 200  # nothing changes before the confirmation
    totp = pyotp.TOTP(secret)
    wrong = "000000" if totp.now() != "000000" else "111111"
    assert browser.submit("code", {"code": wrong}).status_code == 422

    page = browser.submit("password", {"password": PASSWORD})  # start again: a new secret
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', page.text).group(1)
    totp = pyotp.TOTP(secret)
    page = browser.submit("code", {"code": totp.now()})
    assert page.status_code == 200 and "Two-step verification is on" in text_of(page.text)
    codes = re.findall(r"<li><code>([A-Z0-9-]+)</code></li>", page.text)
    assert len(codes) == 10
    page = browser.go("/auth/security")
    assert "is on (10 recovery codes left)" in text_of(page.text) and not any(c in page.text for c in codes)

    # sign-in now asks for the second factor; a recovery code works once
    other = Browser(world.server.url)
    other.go("/auth/login")
    other.sign_in("tom")
    assert "code" in other.form_names() and "Apps with access" not in text_of(other.page.text)
    page = other.submit("code", {"code": codes[0]})
    assert page.status_code == 200 and "Apps with access" in text_of(page.text)
    third = Browser(world.server.url)
    third.go("/auth/login")
    third.sign_in("tom")
    assert third.submit("code", {"code": codes[0]}).status_code == 422
    page = third.submit("code", {"code": totp.at(datetime.now(UTC).timestamp() + 30)})
    assert page.status_code == 200 and "Apps with access" in text_of(page.text)

    # turning it off needs the password (or a code)
    page = third.go("/auth/security")
    assert "9 recovery codes left" in text_of(page.text)
    form = third.form("code")
    data = [(k, v) for k, v in form.values() if k not in ("password", "code")]
    assert third.go("/auth/security", "POST", data + [("password", "wrong password!")]).status_code == 422
    page = third.go("/auth/security", "POST", data + [("password", PASSWORD)])
    assert page.status_code == 200 and "is off" in text_of(page.text)
    signed_in(world, "tom")  # no second factor any more
