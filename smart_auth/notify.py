"""Notifications: one `Notifier` protocol, an outbox in the database, an SMTP transport and a relay between them.

Used for password reset links now and appointment reminders later, so nothing here knows what a message is about:
`kind` names it ("password_reset", "appointment_reminder", ...) and `meta` carries small JSON facts for the consumer.
Message bodies may hold secrets (a reset link), so logs carry only id, kind, a masked recipient and the subject.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol, runtime_checkable

from pymongo.database import Database

from smart_auth.store import OUTBOX, OUTBOX_CLAIMS, AuthStore

QUEUED = "queued"
SENT = "sent"
FAILED = "failed"

_log = logging.getLogger("smart_auth.notify")


@runtime_checkable
class Notifier(Protocol):
    """Anything that can deliver a message to an address."""

    def send(self, to: str, subject: str, body: str, kind: str, meta: dict[str, Any]) -> None:
        """Deliver (or queue for delivery) one message; raise on failure."""
        ...


def mask_address(to: str) -> str:
    """`jane.doe@example.org` -> `j***@example.org`: enough to trace a delivery, not a full address in the logs."""
    local, at, domain = to.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else f"{to[:1]}***"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxNotifier:
    """Writes each message to the `outbox` collection (status "queued") and logs one line without the body."""

    def __init__(self, db: Database, log: logging.Logger | None = None,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.store = AuthStore(db)
        self.log = log or _log
        self.clock = clock

    def send(self, to: str, subject: str, body: str, kind: str, meta: dict[str, Any]) -> None:
        """Queue the message: `_id` uuid, to, subject, body, kind, meta, ts, status "queued"."""
        message_id = uuid.uuid4().hex
        self.store.outbox.insert_one({
            "_id": message_id, "to": to, "subject": subject, "body": body, "kind": kind, "meta": dict(meta),
            "ts": self.clock(), "status": QUEUED,
        })
        # The body may hold a secret link: log only kind, masked recipient and subject.
        self.log.info("notification queued", extra={
            "notification": message_id, "kind": kind, "to": mask_address(to), "subject": subject,
        })


class SMTPNotifier:
    """Sends each message at once through an SMTP server (STARTTLS and login when configured)."""

    def __init__(self, host: str, port: int = 587, sender: str = "", *, username: str | None = None,
                 password: str | None = None, starttls: bool = True, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    def message(self, to: str, subject: str, body: str, kind: str) -> EmailMessage:
        """The e-mail for one notification; `kind` travels in an `X-Notification-Kind` header."""
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["X-Notification-Kind"] = kind
        msg.set_content(body)
        return msg

    def send(self, to: str, subject: str, body: str, kind: str, meta: dict[str, Any]) -> None:
        """Deliver through SMTP; smtplib raises on refusal, which the caller (or the relay) records."""
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(self.message(to, subject, body, kind))


def relay_outbox(db: Database, transport: Notifier, limit: int = 100,
                 clock: Callable[[], datetime] = _utcnow) -> int:
    """Deliver queued outbox messages through `transport`; return how many were sent.

    Safe when several processes relay at once: each message is taken by a unique insert into `outbox_claims`
    (`_id` = message id), so at most one relay sends it, and only that relay then writes its status.
    Delivery is at most once: a relay killed between claim and send leaves the message claimed and unsent.
    """
    store = AuthStore(db)
    sent = 0
    for msg in store.outbox.find({"status": QUEUED}).sort("ts", 1).limit(limit):
        if not store.claim(OUTBOX_CLAIMS, {"_id": msg["_id"], "ts": clock()}):
            continue
        try:
            transport.send(msg["to"], msg["subject"], msg["body"], msg["kind"], msg.get("meta") or {})
        except Exception as exc:  # any transport failure is recorded on the message
            store.outbox.update_one({"_id": msg["_id"]}, {"$set": {"status": FAILED, "error": type(exc).__name__,
                                                                    "done": clock()}})
            _log.warning("notification failed", extra={"notification": msg["_id"], "kind": msg["kind"],
                                                       "error": type(exc).__name__})
            continue
        store.outbox.update_one({"_id": msg["_id"]}, {"$set": {"status": SENT, "done": clock()}})
        sent += 1
    return sent


__all__ = ["FAILED", "OUTBOX", "QUEUED", "SENT", "Notifier", "OutboxNotifier", "SMTPNotifier", "mask_address",
           "relay_outbox"]
