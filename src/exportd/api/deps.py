"""What every route shares: the service, who is calling, and the documented error bodies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from exportd.api.schemas import ErrorBody
from exportd.delivery.links import LinkSigner
from exportd.model.requests import NO_NUL
from exportd.service import ExportService, Principal

ERROR_TEXTS: dict[int, str] = {
    400: "bad input (error_code names the problem)",
    401: "no token, or a token exportd does not know",
    403: "the token's role does not allow this",
    404: "not found; also another project's objects, which are never revealed",
    409: "conflict with the task's state or an earlier request",
    413: "request body larger than the limit",
    500: "internal error (details only in the server log)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the error body."""
    return {c: {"model": ErrorBody, "description": ERROR_TEXTS[c]} for c in codes}


bearer = HTTPBearer(
    scheme_name="bearer",
    auto_error=False,
    description="`Authorization: Bearer <token>`: a project token or the administrator token",
)
auth_token_header = APIKeyHeader(
    name="X-Auth-Token",
    scheme_name="X-Auth-Token",
    auto_error=False,
    description="the same tokens in the `X-Auth-Token` header (the seed documents' way)",
)


async def service(request: Request) -> ExportService:
    """The process's service (async: nothing blocks, so no trip to the thread pool)."""
    svc: ExportService = request.app.state.service
    return svc


async def bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    x_auth_token: Annotated[str | None, Security(auth_token_header)] = None,
) -> str | None:
    """The token the caller sent, from `Authorization: Bearer` or `X-Auth-Token`."""
    token = credentials.credentials if credentials else x_auth_token
    return token.strip() if token else None


def principal(request: Request, token: Annotated[str | None, Depends(bearer_token)]) -> Principal:
    """The caller (401 without a token, or with one that is not valid)."""
    svc: ExportService = request.app.state.service
    return svc.authenticate(token)


def links(request: Request) -> LinkSigner:
    signer: LinkSigner = request.app.state.runtime.links
    return signer


def base_url(request: Request) -> str:
    configured = request.app.state.runtime.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


Svc = Annotated[ExportService, Depends(service)]
Who = Annotated[Principal, Depends(principal)]
Token = Annotated[str | None, Depends(bearer_token)]

ProjectId = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=64, description="the project")
]
TaskId = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=64, description="the export task")
]
DatasetId = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=200, description="a dataset's id or name")
]
