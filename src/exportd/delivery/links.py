"""Signed download links for people (emails, the UI): they work without a token until
they expire. The signature is an HMAC-SHA256, under a server secret, over the project,
task, file name and expiry, checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import orjson

from exportd.errors import Forbidden
from exportd.model import FileRecord, FileStatus, Task


def iso(value: datetime | None) -> str | None:
    """UTC, ISO 8601 with a Z, as the native API writes times."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: datetime


class LinkSigner:
    def __init__(self, secret: str, ttl_seconds: int | None = None) -> None:
        self._key = secret.encode()
        self.ttl_seconds = ttl_seconds

    def signature(self, project_id: str, task_id: str, name: str, expires: int) -> str:
        message = orjson.dumps(["exportd-link-v1", project_id, task_id, name, expires])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def path(self, project_id: str, task_id: str, name: str, expires: int) -> str:
        sig = self.signature(project_id, task_id, name, expires)
        where = "/".join(quote(p, safe="") for p in (project_id, task_id, name))
        return f"/v1/links/{where}?expires={expires}&signature={sig}"

    def for_file(self, task: Task, record: FileRecord, base: str = "") -> Link | None:
        """The link to hand out for a generated file: valid until the file expires (or for
        `ttl_seconds`, when that is sooner)."""
        if task.file_status is not FileStatus.GENERATED or task.file_expires_at is None:
            return None
        expires = task.file_expires_at
        if self.ttl_seconds:
            expires = min(expires, datetime.now(UTC) + timedelta(seconds=self.ttl_seconds))
        at = int(expires.timestamp())
        path = self.path(task.project_id, task.task_id, record.name, at)
        return Link(base.rstrip("/") + path, datetime.fromtimestamp(at, UTC))

    def check(
        self, project_id: str, task_id: str, name: str, expires: int | None, signature: str | None
    ) -> int:
        """403 for a tampered or expired link; returns the seconds it is still valid."""
        if expires is None or not signature:
            raise Forbidden("this link is not signed", "LINK_INVALID")
        want = self.signature(project_id, task_id, name, expires)
        if not hmac.compare_digest(want.encode(), signature.encode()):
            raise Forbidden("this link's signature does not match", "LINK_INVALID")
        left = expires - int(time.time())
        if left <= 0:
            raise Forbidden("this link has expired", "LINK_EXPIRED")
        return left


def secret_file(path: Path, prefix: str) -> str:
    """A secret generated once into `path` (mode 0600), read back by every later start;
    created with O_EXCL so that processes starting together agree on one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it this very moment
            if value := path.read_text().strip():
                return value
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty") from None
    value = prefix + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
