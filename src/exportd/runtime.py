"""The runtime: everything a process of exportd shares (settings, store, storage, source
engines), built from Settings and passed explicitly; no module-level globals."""

from __future__ import annotations

import secrets
from pathlib import Path

from exportd.domain import Dataset, Task
from exportd.errors import BadRequest
from exportd.filters import validate_filter
from exportd.formats import Column, Format, FormatLimits, get_format
from exportd.formats.layout import Layout
from exportd.settings import Settings
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlEngines, SqlSource
from exportd.storage import Storage, open_storage
from exportd.store.sql import Store


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store_url)
        self.storage: Storage = open_storage(settings.files_url)
        self.engines = SqlEngines()
        self.admin_token = settings.admin_token or _admin_token_file(settings.data_dir)

    def source(self, dataset: Dataset) -> Source:
        if dataset.kind == "sql":
            return SqlSource(dataset, self.engines.get(dataset.url))
        raise BadRequest(f"unsupported dataset kind {dataset.kind!r}", "INVALID_DATASET")

    def format(self, task: Task) -> Format:
        return get_format(
            task.format,
            task.request.get("format_options") or {},
            task.request.get("compression"),
            FormatLimits(
                xlsx_sheet_rows=self.settings.xlsx_sheet_rows,
                parts_rewritten=task.parallelism > 1 or Layout.from_request(task.request).split,
            ),
        )

    def close(self) -> None:
        self.engines.dispose()
        self.store.close()


def selection_for(task: Task, dataset: Dataset) -> Selection:
    """The source columns and validated filter a task reads (from its stored request)."""
    kinds = {f["name"]: f.get("kind", "unknown") for f in dataset.fields}
    return Selection(
        columns=list(task.request["_source_columns"]),
        filter=validate_filter(task.request.get("filter"), kinds),
    )


def columns_for(task: Task, dataset: Dataset | None) -> list[Column]:
    """The output columns of a task: names after renames, kinds and types from the source."""
    fields = {f["name"]: f for f in dataset.fields} if dataset else {}
    out = []
    for src, name in zip(task.request["_source_columns"], task.columns, strict=True):
        f = fields.get(src, {})
        out.append(Column(name, f.get("kind", "unknown"), f.get("type") or "unknown"))
    return out


def _admin_token_file(data_dir: Path) -> str:
    """The administrator token: generated once at first start, kept in the data directory."""
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = "exa_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token
