"""The HTTP app: `create_app(settings)` builds it; routes are thin (parse -> service ->
serialize); every error is `{"error_code", "error_msg"}`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from exportd.api.guard import InputGuard
from exportd.api.limits import state_server_limits
from exportd.api.methods import allowed_methods
from exportd.api.schemas import ErrorBody
from exportd.api.status_cache import StatusCache
from exportd.api.status_lane import StatusLane
from exportd.api.ui import add_api_docs, add_dashboard
from exportd.errors import ExportdError, StoreUnavailable, Unavailable
from exportd.execution.pool import WorkerPool
from exportd.execution.processes import WorkerProcesses
from exportd.outages import unreachable
from exportd.runtime import Runtime
from exportd.service import ExportService
from exportd.settings import Settings
from exportd.version import __version__

log = logging.getLogger(__name__)


def error_body(code: str, msg: str) -> dict[str, str]:
    return {"error_code": code, "error_msg": msg}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = list(err.get("loc", ()))
        if where and where[0] in ("body", "query", "path", "header"):
            where = where[1:]  # the location, not a field (fields may be named "query")
        loc = ".".join(str(x) for x in where)
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)[:1000] or "invalid request"


def create_app(settings: Settings | None = None, *, workers: int | None = None) -> FastAPI:
    """The app; its lifespan opens the runtime and, in the embedded deployment, starts
    `workers` in-process workers (default: settings.workers)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime(settings)
        app.state.runtime = rt
        app.state.service = ExportService(rt)
        app.state.status_cache = StatusCache()
        count = settings.workers if workers is None else workers
        pool: WorkerPool | WorkerProcesses
        if settings.worker_processes and count:
            pool = WorkerProcesses(settings, count)  # the API's process does no background work
        else:
            pool = WorkerPool(rt, count)
        pool.start()
        # what start-up made lives as long as the process: out of the collector's sight,
        # so that its full collections (pauses of every request in flight) walk only
        # what requests make
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            pool.stop()
            rt.close()

    app = FastAPI(
        title="exportd",
        version=__version__,
        description="Asynchronous data exports: ask for an export, get a task at once, "
        "watch it run in partitions, download the files.",
        lifespan=lifespan,
        docs_url=None,  # served by add_api_docs from local assets (FastAPI's use a CDN)
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look the providers up in os.environ on every
        # request (a sixth of a status request's CPU); exportd's own telemetry is its
        # Prometheus /metrics and its logs (docs/deployment.md)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.exception_handler(ExportdError)
    async def on_exportd_error(_: Request, exc: ExportdError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
        return JSONResponse(
            error_body(exc.error_code, exc.error_msg), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(SQLAlchemyError)
    async def on_store_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        """A store error that reached a route unwrapped: 503 when the store cannot be
        reached (the client tries again after Retry-After), else an internal error."""
        if unreachable(exc):
            return await on_exportd_error(request, store_unavailable(exc))
        return await on_crash(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("INVALID_REQUEST", _validation_message(exc)), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "INVALID_REQUEST",
            401: "UNAUTHORIZED",
            403: "FORBIDDEN",
            404: "NOT_FOUND",
            405: "METHOD_NOT_ALLOWED",
            413: "PAYLOAD_TOO_LARGE",
        }
        code = codes.get(exc.status_code, "HTTP_ERROR")
        headers = exc.headers
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request.app.routes, request.scope))
            headers = {**(headers or {}), "Allow": allow}
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def on_crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(
            error_body("INTERNAL_ERROR", "internal error; see the server log"), status_code=500
        )

    from exportd.api.metrics import router as metrics_router
    from exportd.api.v1 import router
    from exportd.api.v2 import router as seeds_router

    app.include_router(router)
    app.include_router(seeds_router)
    app.include_router(metrics_router)  # GET /metrics (Prometheus)
    from exportd.api.samples import router as samples_router

    app.include_router(samples_router)
    from exportd.api.imports import router as imports_router

    app.include_router(imports_router)
    add_dashboard(app)
    add_api_docs(app)
    app.add_middleware(StatusLane, api=app)  # inside the guard: its checks come first
    app.add_middleware(InputGuard, max_body_bytes=settings.max_body_bytes)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers (it needs neither the store nor the storage)."""
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        tags=["meta"],
        responses={
            503: {
                "model": ErrorBody,
                "description": "not ready: the store (STORE_UNAVAILABLE) or the storage "
                "(STORAGE_UNAVAILABLE) cannot be reached; Retry-After says when to ask again",
            }
        },
    )
    def readyz(request: Request) -> dict[str, Any]:
        """Readiness: the store answers a trivial query and the storage a lookup. A load
        balancer sends requests only to a ready process; 503 with the reason otherwise."""
        rt: Runtime = request.app.state.runtime
        rt.store.ping()
        try:
            rt.storage.probe(READINESS_KEY)
        except Exception as exc:
            raise Unavailable(
                f"the storage cannot be reached ({type(exc).__name__})", "STORAGE_UNAVAILABLE"
            ) from None
        return {"status": "ready", "version": __version__}

    _document_errors_as_served(app, settings)
    return app


READINESS_KEY = "readyz/probe"  # looked up, never written: a missing key is the answer

UNAVAILABLE_RESPONSE: dict[str, Any] = {
    "description": "the store cannot be reached (STORE_UNAVAILABLE); try again after "
    "Retry-After seconds",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def store_unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the store cannot be reached ({type(exc).__name__}); try again later")


def _document_errors_as_served(app: FastAPI, settings: Settings) -> None:
    """FastAPI documents a 422 on every route; exportd answers bad input with 400 and the
    error body instead, so the OpenAPI document says that (and nothing else). Every route
    that needs the store may answer 503 STORE_UNAVAILABLE with Retry-After."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for route, path in schema.get("paths", {}).items():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
                    if route != "/healthz":
                        op.setdefault("responses", {}).setdefault("503", UNAVAILABLE_RESPONSE)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            state_server_limits(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
