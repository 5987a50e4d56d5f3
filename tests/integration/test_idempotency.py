"""Concurrent creates with one `Idempotency-Key`, on both stores (PostgreSQL is where the
race showed): exactly one task, every caller gets it (or a 409 for a different body),
never a 5xx."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from tests.support import LiveServer

ROUNDS = 20
CALLERS = 50
DIFFERENT = 5  # of the callers send another body with the same key


async def one_round(url: str, token: str, key: str) -> list[httpx.Response]:
    """CALLERS creates with the same key at once, each on its own connection."""
    same = {"dataset_id": "flights", "parallelism": 1, "filter": [{"id": {"lt": 10}}]}
    other = {**same, "parallelism": 2}
    limits = httpx.Limits(max_connections=CALLERS, max_keepalive_connections=CALLERS)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits
    ) as client:
        bodies = [other if i % (CALLERS // DIFFERENT) == 0 else same for i in range(CALLERS)]
        return list(
            await asyncio.gather(
                *(client.post("/v1/projects/acme/exports", json=b) for b in bodies)
            )
        )


def test_concurrent_creates_with_one_key_make_one_task(
    store_url: str, sqlite_source: str, live_server: Any
) -> None:
    server: LiveServer = live_server(store_url=store_url, workers=0)
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="flights", url=sqlite_source, table="flights", key="id")
    for n in range(ROUNDS):
        answers = asyncio.run(one_round(server.url, token, f"order-{n}"))
        codes = Counter(r.status_code for r in answers)
        assert not [r.text for r in answers if r.status_code >= 500], codes
        assert codes[202] == 1, codes  # one caller created the task
        created = next(r.json() for r in answers if r.status_code == 202)
        winner = created["parallelism"]  # which of the two bodies won the race
        for r in answers:
            if r.status_code == 409:
                assert r.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
            else:
                assert r.status_code in (200, 202), r.text
                assert r.json()["task_id"] == created["task_id"]
                where = f"/v1/projects/acme/exports/{created['task_id']}"
                assert r.headers["location"] == where
                assert r.json()["parallelism"] == winner
        same_body = sum(1 for r in answers if r.status_code in (200, 202))
        assert same_body == (CALLERS - DIFFERENT if winner == 1 else DIFFERENT), codes
    listing = admin.http.get("/v1/projects/acme/exports", params={"limit": 100})
    assert listing.json()["count"] == ROUNDS
