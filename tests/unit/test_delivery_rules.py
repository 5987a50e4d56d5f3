"""Pure rules of delivery: webhook signatures (checked against the Standard Webhooks
reference library), retry backoff, signed links and storage prefixes."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from exportd.delivery.links import LinkSigner
from exportd.delivery.notify import backoff, sign
from exportd.errors import BadRequest, Forbidden
from exportd.service import new_webhook_secret
from exportd.storage.keys import check_prefix, check_project_root, output_prefix_for


def test_signature_verifies_with_the_reference_library() -> None:
    secret = new_webhook_secret()
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    body = b'{"type":"export.completed","data":{"task_id":"t"}}'
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "msg_1", ts, body),
    }
    assert Webhook(secret).verify(body, headers)["data"] == {"task_id": "t"}
    assert headers["webhook-signature"] == Webhook(secret).sign(
        "msg_1", datetime.fromtimestamp(ts, UTC), body.decode()
    )
    with pytest.raises(Exception, match="signature"):
        Webhook(new_webhook_secret()).verify(body, headers)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 5.0, 60.0) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_link_signature_covers_every_part() -> None:
    signer = LinkSigner("k" * 40)
    later = int(time.time()) + 100
    sig = signer.signature("p", "t", "a.csv", later)
    assert signer.check("p", "t", "a.csv", later, sig) > 90
    for args in [("q", "t", "a.csv", later), ("p", "u", "a.csv", later),
                 ("p", "t", "b.csv", later), ("p", "t", "a.csv", later + 1)]:  # fmt: skip
        with pytest.raises(Forbidden) as exc:
            signer.check(*args, sig)
        assert exc.value.error_code == "LINK_INVALID"
    with pytest.raises(Forbidden):
        LinkSigner("other" * 8).check("p", "t", "a.csv", later, sig)
    past = int(time.time()) - 1
    with pytest.raises(Forbidden) as exc:
        signer.check("p", "t", "a.csv", past, signer.signature("p", "t", "a.csv", past))
    assert exc.value.error_code == "LINK_EXPIRED"


def test_link_path_quotes_names() -> None:
    path = LinkSigner(os.urandom(8).hex()).path("p", "t", "a b#?.csv", 1)
    assert path.startswith("/v1/links/p/t/a%20b%23%3F.csv?expires=1&signature=")


@pytest.mark.parametrize("ok", ["a", "reports/2026-06", "x/y_z/v.1/w=2", "A9/" * 7 + "z"])
def test_good_prefixes(ok: str) -> None:
    assert check_prefix(ok) == ok


@pytest.mark.parametrize(
    "bad", ["", "/a", "a/", "a//b", "..", "a/../b", ".x", "a\\b", "a b", "é", "a/" * 8 + "b"]
)
def test_bad_prefixes(bad: str) -> None:
    with pytest.raises(BadRequest):
        check_prefix(bad)


def test_project_roots() -> None:
    assert check_project_root("p", "exports/p/sub") == "exports/p/sub"
    assert check_project_root("p", "teams/p") == "teams/p"
    for bad in ("exports", "exports/q", "parts", "parts/p"):
        with pytest.raises(BadRequest):
            check_project_root("p", bad)
    assert output_prefix_for("exports/p", None, "t1") == "exports/p/t1/"
    assert output_prefix_for("teams/p", "d/2026", "t1") == "teams/p/d/2026/t1/"
