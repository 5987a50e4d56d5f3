"""A Python client for exportd's native API (used by the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED", "TIMEOUT"}


class ClientError(Exception):
    def __init__(self, status: int, error_code: str, error_msg: str) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg


class ExportdClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ExportdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            try:
                body = r.json()
                code, msg = body.get("error_code", "HTTP_ERROR"), body.get("error_msg", r.text)
            except ValueError:
                code, msg = "HTTP_ERROR", r.text[:200]
            raise ClientError(r.status_code, code, msg)
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else None

    # administration
    def create_project(self, project_id: str) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/projects", json={"project_id": project_id}))

    def create_token(self, project_id: str, role: str = "writer") -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/projects/{project_id}/tokens", json={"role": role}))

    def add_dataset(self, project_id: str, **body: Any) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/projects/{project_id}/datasets", json=body))

    def list_datasets(self, project_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/projects/{project_id}/datasets")["datasets"])

    # exports
    def create_export(
        self, project_id: str, idempotency_key: str | None = None, **body: Any
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(
            self._call("POST", f"/v1/projects/{project_id}/exports", json=body, headers=headers)
        )

    def get_export(self, project_id: str, task_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/projects/{project_id}/exports/{task_id}"))

    def list_exports(self, project_id: str, **params: Any) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/projects/{project_id}/exports", params=params))

    def cancel(self, project_id: str, task_id: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/v1/projects/{project_id}/exports/{task_id}/cancel"))

    def manifest(self, project_id: str, task_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/projects/{project_id}/exports/{task_id}/manifest"))

    def download(self, project_id: str, task_id: str, dest: Path) -> Path:
        path = f"/v1/projects/{project_id}/exports/{task_id}/download"
        with self.http.stream("GET", path, follow_redirects=True) as r:
            if r.status_code >= 400:
                r.read()
                body = r.json()
                raise ClientError(r.status_code, body["error_code"], body["error_msg"])
            if dest.is_dir():
                dest = dest / _attachment_name(r.headers.get("content-disposition", ""), task_id)
            with open(dest, "wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    fh.write(chunk)
        return dest

    def wait(
        self,
        project_id: str,
        task_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        interval: float | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the task ends: every `interval` seconds, or backing off 1 s -> 30 s
        as the server's Retry-After says."""
        start = time.monotonic()
        delay = 1.0
        while True:
            task = self.get_export(project_id, task_id)
            if on_update:
                on_update(task)
            if task["status"] in TERMINAL:
                return task
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"export {task_id} still {task['status']} after {timeout}s")
            wait = interval if interval is not None else min(30.0, task.get("retry_after") or delay)
            time.sleep(wait)
            delay = min(30.0, delay * 2)


def _attachment_name(disposition: str, fallback: str) -> str:
    for part in disposition.split(";"):
        part = part.strip()
        if part.startswith("filename="):
            name = part[len("filename=") :].strip('"')
            if name and "/" not in name and name not in (".", ".."):
                return name
    return fallback
