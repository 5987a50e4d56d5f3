"""Delivering notifications from the outbox: signed webhooks (Standard Webhooks) and
emails over SMTP. Each attempt is recorded on the notification; a failure is retried with
exponential backoff and, in the end, marked FAILED. The export's own status never moves.

The body is rendered at the first attempt and then frozen, so every retry sends the same
bytes under the same `webhook-id` (receivers can deduplicate on it).

Deliveries run on a pool of their own (`NotificationPool`, `EXPORTD_NOTIFY_WORKERS`
threads in each worker process), never on the export workers, and the store hands out at
most `EXPORTD_NOTIFY_PROJECT_CONCURRENCY` deliveries of one project at a time: slow
receivers of one project delay neither exports nor other projects' notifications.

Webhooks go only to public addresses (see outbound.py). What an attempt records is its
status code or a generic error class: nothing of a receiver's answer and nothing that
tells one internal failure from another; the details go to the server's log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
import orjson

from exportd import metrics
from exportd.delivery.links import LinkSigner, iso
from exportd.delivery.outbound import OutboundPolicy, RefusedByPolicy, guarded_client
from exportd.errors import StoreUnavailable
from exportd.model import Channel, Notification, Task
from exportd.settings import Settings
from exportd.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` of Standard Webhooks: v1, base64 HMAC-SHA256 of `id.ts.body`
    under the base64-decoded part of the `whsec_` secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: base, 2 base, 4 base, ... at most `cap`."""
    return float(min(cap, base * 2 ** (attempt - 1)))


class Services(Protocol):
    """What delivering needs of the process it runs in (`exportd.runtime.Runtime`)."""

    settings: Settings
    store: Store
    links: LinkSigner


def render(task: Task, event: str, rt: Services) -> dict[str, Any]:
    """The event's body: the task's final status, counts, files and signed links."""
    base = (rt.settings.public_url or "").rstrip("/")
    files = []
    for f in task.files:
        link = rt.links.for_file(task, f, base)
        files.append(
            {
                "name": f.name,
                "kind": f.kind,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
                "url": link.url if link else None,
                "url_expires_at": iso(link.expires_at) if link else None,
            }
        )
    data = {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": task.status.value,
        "file_status": task.file_status.value,
        "file_name": task.file_name,
        "error_code": task.error_code,
        "error_msg": task.error_msg,
        "total_count": task.total_count,
        "finished_count": task.finished_count,
        "failed_count": task.failed_count,
        "bytes_written": task.bytes_written,
        "create_time": iso(task.create_time),
        "end_time": iso(task.end_time),
        "file_expires_at": iso(task.file_expires_at),
        "status_url": f"{base}/v1/projects/{task.project_id}/exports/{task.task_id}",
        "files": files,
    }
    return {"type": event, "timestamp": iso(datetime.now(UTC)), "data": data}


class Notifier:
    def __init__(self, rt: Services) -> None:
        self.rt = rt
        self.policy = OutboundPolicy.from_entries(rt.settings.webhook_allow_networks)

    def deliver_next(self) -> bool:
        """Make one attempt at the notification due first (of a project with a free
        delivery slot); False when none is due."""
        store, s = self.rt.store, self.rt.settings
        claim = store.claim_notification(
            max(60.0, 3 * s.webhook_timeout_seconds), s.notify_project_concurrency
        )
        if claim is None:
            return False
        note, token = claim
        payload = note.payload or render(
            store.get_task(note.project_id, note.task_id), note.event, self.rt
        )
        started = time.monotonic()
        outcome = self._send(note, payload)
        attempt = {
            "attempt": note.attempts + 1,
            "at": iso(datetime.now(UTC)),
            "ok": outcome.ok,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "duration_ms": int(1000 * (time.monotonic() - started)),
        }
        retry = None
        if not outcome.ok and note.attempts + 1 < s.notify_max_attempts:
            retry = backoff(
                note.attempts + 1, s.notify_retry_base_seconds, s.notify_retry_max_seconds
            )
        store.record_attempt(note.notification_id, token, attempt, payload, retry)
        if not outcome.ok:
            metrics.notification_failed(note.channel.value)
        if outcome.status_code is not None and not outcome.ok:
            log.warning("webhook %s to %s: %s", note.notification_id, note.target, outcome.error)
        return True

    def _send(self, note: Notification, payload: dict[str, Any]) -> Outcome:
        try:
            if note.channel is Channel.WEBHOOK:
                return self._webhook(note, payload)
            return self._email(note, payload)
        except Exception as exc:  # any failure is one failed attempt, never a crash
            log.warning(
                "%s %s of project %s to %s failed: %s: %s", note.channel.value,
                note.notification_id, note.project_id, note.target, type(exc).__name__, exc,
            )  # fmt: skip
            return Outcome(False, None, failure_class(exc))

    def _webhook(self, note: Notification, payload: dict[str, Any]) -> Outcome:
        secret = self.rt.store.webhook_secret(note.project_id)
        if secret is None:
            return Outcome(False, None, "the project has no webhook secret")
        body = orjson.dumps(payload)
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "exportd-webhooks",
            "webhook-id": note.notification_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, note.notification_id, ts, body),
        }
        timeout = self.rt.settings.webhook_timeout_seconds
        with (
            guarded_client(self.policy, timeout) as client,
            client.stream("POST", note.target, content=body, headers=headers) as r,
        ):
            code = r.status_code  # the answer's body is never read
        if 200 <= code < 300:
            return Outcome(True, code)
        if 300 <= code < 400:
            return Outcome(False, code, f"HTTP {code} (redirects are not followed)")
        return Outcome(False, code, f"HTTP {code}")

    def _email(self, note: Notification, payload: dict[str, Any]) -> Outcome:
        s = self.rt.settings
        if not s.smtp_host:
            return Outcome(False, None, "no SMTP server is configured (EXPORTD_SMTP_HOST)")
        msg = email_message(payload, s.smtp_from, note.target)
        smtp_cls = smtplib.SMTP_SSL if s.smtp_ssl else smtplib.SMTP
        with smtp_cls(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds) as smtp:
            if s.smtp_starttls and not s.smtp_ssl:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password or "")
            refused = smtp.send_message(msg)
        if refused:
            log.warning("email %s refused: %s", note.notification_id, refused)
            codes = sorted({code for code, _ in refused.values()})
            return Outcome(False, None, f"refused by the mail server ({codes[0]})")
        return Outcome(True)


def failure_class(exc: Exception) -> str:
    """What an attempt shows of a failure: its class only. A closed port, a filtered one
    and a name that does not resolve all read "could not connect", so the answers do not
    map what listens where; a receiver's own words are never repeated."""
    if isinstance(exc, RefusedByPolicy):
        return "refused by policy: webhooks go to public addresses only"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | socket.gaierror):
        return "could not connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out waiting for the receiver"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return "the webhook URL cannot be called"
    if isinstance(exc, httpx.TransportError):
        return "the connection failed during the call"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{type(exc).__name__} ({exc.smtp_code})"
    if isinstance(exc, smtplib.SMTPException | OSError):
        return f"{type(exc).__name__}"
    return "delivery failed"


IDLE_POLLS = 10  # an idle thread other than the first polls every IDLE_POLLS poll_seconds


class NotificationPool:
    """Threads that only deliver notifications, so a slow receiver holds one of these at
    most, never an export worker; stopped with the process's worker pool."""

    def __init__(self, rt: Services, size: int) -> None:
        self.rt = rt
        self.stop_event = threading.Event()
        self._primary_busy = threading.Event()  # the first thread is inside a delivery
        self._more = threading.Event()  # the first thread's last ask found work
        self.threads = [
            threading.Thread(
                target=self.run, args=(Notifier(rt), i), name=f"exportd-notify-{i}", daemon=True
            )
            for i in range(size)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def run(self, notifier: Notifier, index: int = 0) -> None:
        """Deliver until stopped; store calls ride out an outage like the workers' do.

        The first thread asks the outbox at every wake-up of the store and every
        `poll_seconds`; the others ask only while it is busy delivering (a slow receiver
        must not hold up the rest), after it found work (several may be due at once), or
        every IDLE_POLLS poll_seconds: a wake-up costs the store one query, not one per
        thread."""
        poll = self.rt.settings.poll_seconds
        idle = poll if index == 0 else poll * IDLE_POLLS
        last = 0.0
        with self.rt.store.riding_out(self.rt.settings.outage_budget_seconds):
            while not self.stop_event.is_set():
                try:
                    ask = (
                        index == 0
                        or self._primary_busy.is_set()
                        or self._more.is_set()
                        or time.monotonic() - last >= idle
                    )
                    found = False
                    if ask:
                        last = time.monotonic()
                        if index == 0:
                            self._primary_busy.set()
                        try:
                            found = notifier.deliver_next()
                        finally:
                            if index == 0:
                                self._primary_busy.clear()
                    if found and index == 0 and len(self.threads) > 1:
                        self._more.set()
                        self.rt.store.waker.notify_local()
                    elif not found:
                        if index == 0:
                            self._more.clear()
                        self.rt.store.waker.wait(idle)
                except StoreUnavailable:
                    log.warning("notifications: the store stayed unreachable")
                    self.stop_event.wait(1.0)
                except Exception:  # one bad delivery must not end the thread
                    log.exception("notifications: delivery step failed")
                    self.stop_event.wait(1.0)

    def stop(self, deadline: float) -> None:
        """Let each thread finish its attempt in flight (bounded by the webhook timeout),
        waiting until `deadline` (time.monotonic) at most."""
        self.stop_event.set()
        self.rt.store.waker.notify_local()
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


def email_message(payload: dict[str, Any], sender: str, to: str) -> EmailMessage:
    """A plain-text email with the status, the counts and the download links."""
    data = payload["data"]
    msg = EmailMessage()
    msg["Subject"] = f"exportd: export {data['file_name']} {data['status']}"
    msg["From"] = sender
    msg["To"] = to
    lines = [
        f"Export {data['task_id']} of dataset {data['dataset_id']} ended {data['status']}.",
        f"Rows: {data['finished_count']} exported, {data['failed_count']} failed.",
    ]
    if data.get("error_code"):
        lines.append(f"Error: {data['error_code']}: {data['error_msg']}")
    for f in data["files"]:
        if f["url"]:
            lines.append(f"{f['name']} ({f['bytes']} bytes): {f['url']}")
            lines.append(f"  (link valid until {f['url_expires_at']})")
    if data.get("file_expires_at"):
        lines.append(f"The files are deleted at {data['file_expires_at']}.")
    lines.append(f"Status: {data['status_url']}")
    msg.set_content("\n".join(lines) + "\n")
    return msg
