"""Notifications at the end of an export, delivered to real receivers on loopback: an HTTP
server that checks the Standard Webhooks signature with the reference library and fails
the first attempts, and an SMTP server (aiosmtpd) with login."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks import Webhook

from tests.support import free_port

FILTER = {"id": {"between": [1, 500]}}
LOOPBACK = ["127.0.0.1/32"]  # the receivers of these tests: trusted by the administrator


class Receiver:
    """Webhook endpoint on a loopback address: answers 500 (with `body`) to the first
    `fail_first` calls, then 204; keeps every call with whether its signature verified
    under `secret`. With `hold`, every call waits until the event is set."""

    def __init__(
        self,
        secret: str,
        fail_first: int = 0,
        *,
        bind: str = "127.0.0.1",
        body: bytes = b"",
        hold: threading.Event | None = None,
    ) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.calls: list[dict[str, Any]] = []
        self.answered = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(data, headers)
                    verified = True
                except Exception:
                    verified = False
                receiver.calls.append({"headers": headers, "body": data, "verified": verified})
                if hold is not None:
                    hold.wait(120)
                code = 500 if len(receiver.calls) <= receiver.fail_first else 204
                self.send_response(code)
                self.send_header("content-length", str(len(body) if code == 500 else 0))
                self.end_headers()
                if code == 500:
                    self.wfile.write(body)
                receiver.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((bind, free_port()), Handler)
        self.port = self.server.server_port
        self.url = f"http://{bind}:{self.port}/hooks/exportd"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth: Any
) -> AuthResult:
    ok = isinstance(auth, LoginPassword) and (auth.login, auth.password) == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield port, inbox
    controller.stop()


def wait_for(api: Any, task_id: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    return api.wait("p", task_id, timeout=timeout, until=lambda t: t["is_terminal"] and done(t))


def project(server: Any, source: str, project_id: str = "p") -> tuple[Any, Any, str]:
    admin = server.client()
    r = admin.http.post("/v1/projects", json={"project_id": project_id})
    assert r.status_code == 201
    secret = r.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    token = admin.http.post(f"/v1/projects/{project_id}/tokens", json={"role": "writer"}).json()[
        "token"
    ]
    admin.dataset(project_id, name="flights", url=source, table="flights", key="id")
    return admin, server.client(token), secret


def test_webhook_retried_until_accepted_and_signed(sqlite_source: str, live_server: Any) -> None:
    server = live_server(notify_retry_base_seconds=0.2, webhook_allow_networks=LOOPBACK)
    admin, api, secret = project(server, sqlite_source)
    with Receiver(secret, fail_first=2) as hook:
        task = api.export(
            "p", dataset_id="flights", filter=FILTER, parallelism=2,
            notify={"webhook_url": hook.url},
        )  # fmt: skip
        done = wait_for(
            api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING"
        )

    assert done["status"] == "COMPLETED"  # whatever the receiver did
    [note] = done["notifications"]
    assert note["channel"] == "webhook" and note["target"] == hook.url
    assert note["status"] == "DELIVERED" and note["attempts"] == 3
    assert [a["status_code"] for a in note["attempt_log"]] == [500, 500, 204]
    assert [a["ok"] for a in note["attempt_log"]] == [False, False, True]
    assert note["attempt_log"][0]["error"].startswith("HTTP 500")
    assert note["last_error"] is None and note["event"] == "export.completed"
    # exponential backoff: the retries came at least 0.2 s, then 0.4 s after the failures
    at = [datetime.fromisoformat(a["at"].replace("Z", "+00:00")) for a in note["attempt_log"]]
    assert (at[1] - at[0]).total_seconds() >= 0.2
    assert (at[2] - at[1]).total_seconds() >= 0.4

    assert len(hook.calls) == 3 and all(c["verified"] for c in hook.calls)
    assert len({c["headers"]["webhook-id"] for c in hook.calls}) == 1  # one message, retried
    assert len({c["body"] for c in hook.calls}) == 1  # same bytes every time
    assert hook.calls[0]["headers"]["webhook-id"] == note["notification_id"]
    body = json.loads(hook.calls[0]["body"])
    assert body["type"] == "export.completed"
    data = body["data"]
    assert data["task_id"] == task["task_id"] and data["status"] == "COMPLETED"
    assert data["finished_count"] == 500 and data["failed_count"] == 0
    [csv_file] = [f for f in data["files"] if f["kind"] == "data"]
    # the link in the webhook works without a token
    got = httpx.get(csv_file["url"])
    assert got.status_code == 200
    rows = list(csv.reader(io.StringIO(got.text)))
    assert len(rows) == 501 and sorted(int(r[0]) for r in rows[1:]) == list(range(1, 501))
    # the secret is never shown again
    shown = admin.http.get("/v1/projects/p/settings").text + json.dumps(done)
    assert secret not in shown and secret.removeprefix("whsec_") not in shown


def test_a_forged_signature_does_not_verify(sqlite_source: str, live_server: Any) -> None:
    """The receiver's check can fail: a receiver holding another secret rejects the call."""
    server = live_server(notify_max_attempts=1, webhook_allow_networks=LOOPBACK)
    _, api, _secret = project(server, sqlite_source)
    other = "whsec_" + "QUJD" * 11
    with Receiver(other) as hook:
        task = api.export(
            "p", dataset_id="flights", filter=FILTER, notify={"webhook_url": hook.url}
        )
        wait_for(api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING")
    assert len(hook.calls) == 1 and hook.calls[0]["verified"] is False


def test_undeliverable_webhook_never_changes_the_export(
    sqlite_source: str, live_server: Any
) -> None:
    server = live_server(
        notify_max_attempts=2, notify_retry_base_seconds=0.1, webhook_allow_networks=LOOPBACK
    )
    _, api, _ = project(server, sqlite_source)
    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    task = api.export("p", dataset_id="flights", filter=FILTER, notify={"webhook_url": closed})
    done = wait_for(api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING")
    [note] = done["notifications"]
    assert note["status"] == "FAILED" and note["attempts"] == 2
    assert note["last_error"] == "could not connect"  # no more than that
    assert done["status"] == "COMPLETED" and done["file_status"] == "GENERATED"
    assert done["error_code"] is None


def test_email_with_project_defaults(
    sqlite_source: str, live_server: Any, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    server = live_server(
        smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
        smtp_username="mailer", smtp_password="s3cret", smtp_from="exports@example.com",
    )  # fmt: skip
    admin, api, _ = project(server, sqlite_source)
    r = admin.http.put(
        "/v1/projects/p/settings",
        json={"notify": {"emails": ["ana@example.com", "bo@example.com"]}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["notify"] == {"emails": ["ana@example.com", "bo@example.com"]}

    task = api.export("p", dataset_id="flights", filter=FILTER, file_name="first500.csv")
    done = wait_for(
        api, task["task_id"], lambda t: all(n["status"] != "PENDING" for n in t["notifications"])
    )
    assert sorted((n["target"], n["status"]) for n in done["notifications"]) == [
        ("ana@example.com", "DELIVERED"), ("bo@example.com", "DELIVERED"),
    ]  # fmt: skip
    assert sorted(m["To"] for m in inbox.messages) == ["ana@example.com", "bo@example.com"]
    msg = inbox.messages[0]
    assert msg["From"] == "exports@example.com"
    assert "first500.csv" in msg["Subject"] and "COMPLETED" in msg["Subject"]
    text = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "500 exported" in text
    [link] = [w for w in text.split() if "/v1/links/" in w and "first500.csv" in w]
    got = httpx.get(link)
    assert got.status_code == 200
    assert len(list(csv.reader(io.StringIO(got.text)))) == 501


def test_wrong_smtp_login_is_recorded(
    sqlite_source: str, live_server: Any, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    server = live_server(
        smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
        smtp_username="mailer", smtp_password="wrong", notify_max_attempts=1,
    )  # fmt: skip
    _, api, _ = project(server, sqlite_source)
    task = api.export(
        "p", dataset_id="flights", filter=FILTER, notify={"emails": ["ana@example.com"]}
    )
    done = wait_for(api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING")
    [note] = done["notifications"]
    assert note["status"] == "FAILED" and "SMTPAuthenticationError" in note["last_error"]
    assert "wrong" not in json.dumps(done)  # the password is not echoed
    assert inbox.messages == [] and done["status"] == "COMPLETED"


def test_notifications_commit_with_the_terminal_status(
    sqlite_source: str, live_server: Any
) -> None:
    """With no worker running, a canceled task already holds its notification (written in
    the cancel's transaction), waiting to be delivered."""
    server = live_server(workers=0)
    _, api, _ = project(server, sqlite_source)
    task = api.export(
        "p", dataset_id="flights", filter=FILTER,
        notify={"webhook_url": "https://hooks.example.com/x", "emails": ["ana@example.com"]},
    )  # fmt: skip
    assert api.task("p", task["task_id"])["notifications"] == []
    r = api.http.post(f"/v1/projects/p/exports/{task['task_id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "CANCELED"
    notes = r.json()["notifications"]
    assert sorted((n["channel"], n["event"], n["status"]) for n in notes) == [
        ("email", "export.canceled", "PENDING"), ("webhook", "export.canceled", "PENDING"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("notify", "field"),
    [
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"webhook_url": "http://user:pw@example.com/x"}, "webhook_url"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"emails": ["not-an-address"]}, "emails"),
        ({"sms": "+123"}, "sms"),
    ],
)
def test_bad_notify_is_400(
    notify: dict[str, Any], field: str, sqlite_source: str, live_server: Any
) -> None:
    server = live_server(workers=0)
    _, api, _ = project(server, sqlite_source)
    r = api.http.post("/v1/projects/p/exports", json={"dataset_id": "flights", "notify": notify})
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_REQUEST" and field in r.json()["error_msg"]
    assert "pw" not in r.text
    assert api.http.get("/v1/projects/p/exports").json()["count"] == 0


# ---- outbound policy: webhooks reach public addresses only -------------------------------


@pytest.mark.parametrize(
    ("host", "bind"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),  # a name that resolves to loopback
        ("127.0.0.2", "127.0.0.2"),
        ("127.1", "127.0.0.1"),  # the short form, resolved by the system
        ("2130706433", "127.0.0.1"),  # 127.0.0.1 as one number, resolved by the system
    ],
)
def test_webhook_to_loopback_is_refused_and_nothing_is_sent(
    host: str, bind: str, sqlite_source: str, live_server: Any
) -> None:
    """By default a webhook to a loopback address, however it is spelled, is refused where
    the connection is made: the receiver listening there never sees a request. (IPv6
    literals are refused at submission by the URL's pattern; their IPv4-mapped forms are
    in tests/unit/test_outbound.py.)"""
    server = live_server(notify_max_attempts=2, notify_retry_base_seconds=0.1)
    _, api, secret = project(server, sqlite_source)
    with Receiver(secret, bind=bind) as hook:
        url = f"http://{host}:{hook.port}/hooks/exportd"
        task = api.export("p", dataset_id="flights", filter=FILTER, notify={"webhook_url": url})
        done = wait_for(
            api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING"
        )
    [note] = done["notifications"]
    assert note["status"] == "FAILED" and note["attempts"] == 2
    assert note["last_error"].startswith("refused by policy")
    assert all(a["status_code"] is None for a in note["attempt_log"])
    assert hook.calls == []  # nothing was sent
    assert done["status"] == "COMPLETED"


def test_a_receivers_answer_is_never_shown(sqlite_source: str, live_server: Any) -> None:
    """What a receiver answers stays with exportd: the attempts record the status code only
    (an internal service's error page is not readable through webhooks)."""
    server = live_server(notify_max_attempts=1, webhook_allow_networks=LOOPBACK)
    _, api, secret = project(server, sqlite_source)
    banner = b"internal-admin-console v3.2 token=ab12cd34"
    with Receiver(secret, fail_first=1, body=banner) as hook:
        task = api.export(
            "p", dataset_id="flights", filter=FILTER, notify={"webhook_url": hook.url}
        )
        done = wait_for(
            api, task["task_id"], lambda t: t["notifications"][0]["status"] != "PENDING"
        )
    [note] = done["notifications"]
    assert len(hook.calls) == 1 and hook.answered == 1  # it was called and it answered
    assert note["status"] == "FAILED" and note["last_error"] == "HTTP 500"
    assert note["attempt_log"][0]["status_code"] == 500
    shown = json.dumps(done)
    assert "internal-admin-console" not in shown and "ab12cd34" not in shown


# ---- isolation: notifications on their own pool, a limit per project ---------------------


def test_slow_webhooks_of_one_project_delay_neither_exports_nor_other_projects(
    sqlite_source: str, live_server: Any
) -> None:
    """Project A's receiver holds every request open. With one export worker, project B's
    export still completes and B's webhook is delivered while A's requests are held; A
    never has more than its limit of deliveries in flight."""
    server = live_server(
        workers=1, notify_workers=3, notify_project_concurrency=2, notify_max_attempts=1,
        webhook_timeout_seconds=120, webhook_allow_networks=LOOPBACK,
    )  # fmt: skip
    _, api_a, secret_a = project(server, sqlite_source, "a")
    _, api_b, secret_b = project(server, sqlite_source, "b")
    release = threading.Event()
    with Receiver(secret_a, hold=release) as slow, Receiver(secret_b) as fast:
        try:
            a_tasks = [
                api_a.export(
                    "a", dataset_id="flights", filter=FILTER, notify={"webhook_url": slow.url}
                )["task_id"]
                for _ in range(4)
            ]
            for tid in a_tasks:  # every export of A ends, whatever its receiver does
                assert api_a.wait("a", tid)["status"] == "COMPLETED"
            _until(lambda: len(slow.calls) == 2)  # A's limit of deliveries is in flight

            b = api_b.export(
                "b", dataset_id="flights", filter=FILTER, notify={"webhook_url": fast.url}
            )
            done_b = api_b.wait(
                "b", b["task_id"],
                until=lambda t: t["is_terminal"] and t["notifications"][0]["status"] != "PENDING",
            )  # fmt: skip
            # B is done and told while the receiver still holds A's two requests
            assert done_b["status"] == "COMPLETED"
            assert done_b["notifications"][0]["status"] == "DELIVERED" and len(fast.calls) == 1
            assert len(slow.calls) == 2 and slow.answered == 0
            a_notes = [api_a.task("a", tid)["notifications"][0] for tid in a_tasks]
            assert sorted(n["attempts"] for n in a_notes) == [0, 0, 0, 0]
            assert all(n["status"] == "PENDING" for n in a_notes)
        finally:
            release.set()
        for tid in a_tasks:  # released: A's deliveries go on, two at a time
            api_a.wait("a", tid, until=lambda t: t["notifications"][0]["status"] == "DELIVERED")
    assert len(slow.calls) == 4 and len({c["body"] for c in slow.calls}) == 4


def _until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true")
        time.sleep(0.05)
