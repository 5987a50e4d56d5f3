"""`GET /metrics`: the Prometheus text exposition of this process (its own counters, see
`exportd.metrics`, and prometheus_client's process collectors) and the whole service's
figures read from the store at scrape time: tasks by status, partitions by status,
queued and running. One grouped query per table, over its status index.

Who may scrape: the administrator token (`Authorization: Bearer`), unless
`EXPORTD_METRICS_PUBLIC=true` opens it to anyone who reaches the port. Either way no
series names a project, a task or a dataset: a scrape reveals no tenant's data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from exportd.api.deps import auth_token_header, bearer
from exportd.errors import Forbidden
from exportd.model import PartitionStatus, TaskStatus
from exportd.runtime import Runtime
from exportd.service import ExportService

router = APIRouter(tags=["meta"])


class StoreCollector(Collector):
    """The store's figures, read when collected."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.rt.store.status_counts()
        tasks = GaugeMetricFamily(
            "exportd_tasks", "tasks in the store by status", labels=["status"]
        )
        for status in TaskStatus:
            tasks.add_metric([status.value], counts["tasks"].get(status.value, 0))
        yield tasks
        parts = GaugeMetricFamily(
            "exportd_partitions",
            "partitions not yet stopped (PENDING, RUNNING, WAITING) by status",
            labels=["status"],
        )
        for pstatus in (s for s in PartitionStatus if not s.is_terminal):
            parts.add_metric([pstatus.value], counts["partitions"].get(pstatus.value, 0))
        yield parts
        by_part = counts["partitions"]
        yield GaugeMetricFamily(
            "exportd_partitions_queued",
            "partitions waiting to be claimed (PENDING)",
            value=by_part.get(PartitionStatus.PENDING.value, 0),
        )
        yield GaugeMetricFamily(
            "exportd_partitions_running",
            "partitions under a worker's lease (RUNNING)",
            value=by_part.get(PartitionStatus.RUNNING.value, 0),
        )


def scraper(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    x_auth_token: Annotated[str | None, Security(auth_token_header)] = None,
) -> None:
    """The administrator, unless the metrics are public (401 without a token, 403 for a
    project token)."""
    rt: Runtime = request.app.state.runtime
    if rt.settings.metrics_public:
        return
    token = credentials.credentials if credentials else x_auth_token
    svc: ExportService = request.app.state.service
    who = svc.authenticate(token.strip() if token else None)
    if not who.is_admin:
        raise Forbidden("only the administrator token may read the metrics", "FORBIDDEN")


@router.get("/metrics", include_in_schema=False)  # for Prometheus, not an API client
def metrics(request: Request, _: Annotated[None, Depends(scraper)]) -> Response:
    """Prometheus metrics of this process and of the store (no project is named)."""
    store = CollectorRegistry(auto_describe=False)
    store.register(StoreCollector(request.app.state.runtime))
    own: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # `serve`'s worker processes' too
        own = CollectorRegistry()
        multiprocess.MultiProcessCollector(own)  # type: ignore[no-untyped-call]
    body = generate_latest(own) + generate_latest(store)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
