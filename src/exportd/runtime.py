"""The runtime: everything a process of exportd shares (settings, store, storage, source
engines), built from Settings and passed explicitly; no module-level globals."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exportd.delivery.links import LinkSigner, secret_file
from exportd.documents.flatten import DocumentPaths
from exportd.errors import BadRequest
from exportd.formats import Column, Format, FormatLimits, get_format
from exportd.model import Dataset, DatasetKind, Task
from exportd.settings import Settings
from exportd.sources import Selection, Source
from exportd.sources.connections import Connections
from exportd.sources.filters import validate_filter
from exportd.sources.policy import SourcePolicy
from exportd.sources.sql import SqlEngines, SqlSource, sqlite_copy_file
from exportd.sources.targets import TargetEngines
from exportd.storage import Storage, open_storage
from exportd.store import Store


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.store_url)
        self.storage: Storage = open_storage(settings.files_url, settings.outage_budget_seconds)
        self.policy = SourcePolicy(
            settings.source_dirs,
            settings.store_url,
            data_dir=settings.data_dir,
            own_dirs=_own_dirs(settings),
            store_engine=lambda: self.store.engine,
        )
        self.engines = SqlEngines(self.policy)
        self.targets = TargetEngines(self.policy)  # writable: import targets only
        self.connections = Connections(self.store, settings.connections, self.policy, self.engines)
        self.admin_token = settings.admin_token or _admin_token_file(settings.data_dir)
        self.links = LinkSigner(
            settings.link_secret or secret_file(settings.data_dir / "link_secret", "exl_"),
            settings.link_ttl_seconds,
        )

    def source(self, dataset: Dataset, snapshot: str | None = None) -> Source:
        """The dataset's source; `snapshot` (a task's): a task whose snapshot is a
        consistent copy of a SQLite database reads the copy (docs/consistency.md)."""
        from exportd.sources.documents import JsonLinesDocumentSource, SqlDocumentSource

        if dataset.kind is DatasetKind.SQL:
            return SqlSource(dataset, self._engine(dataset, snapshot))
        if dataset.kind is DatasetKind.DOCUMENTS and dataset.options.get("path"):
            return JsonLinesDocumentSource(dataset)
        if dataset.kind is DatasetKind.DOCUMENTS:
            return SqlDocumentSource(dataset, self._engine(dataset, snapshot))
        if dataset.kind is DatasetKind.FILES:  # imported here: pyarrow.dataset is 50 MB of memory
            from exportd.sources.files import ArrowFilesSource

            return ArrowFilesSource(dataset)
        if dataset.kind is DatasetKind.SAMPLES:
            from exportd.sources.samples import SamplesSource

            return SamplesSource(dataset)
        raise BadRequest(f"unsupported dataset kind {dataset.kind!r}", "INVALID_DATASET")

    def _engine(self, dataset: Dataset, snapshot: str | None = None) -> Any:
        """The source engine of a database dataset: with `max_connections`, one whose
        pool holds at most that many connections; a task's SQLite copy's own engine
        (docs/consistency.md)."""
        copy = sqlite_copy_file(self.settings.snapshot_path, snapshot)
        if copy is not None:
            return self.engines.copy(copy)
        limit = dataset.options.get("max_connections")
        return self.engines.get(self.connections.dataset_url(dataset), limit)

    def format(self, task: Task) -> Format:
        out = task.plan.output
        return get_format(
            out.format,
            out.format_options,
            out.compression,
            FormatLimits(xlsx_sheet_rows=self.settings.xlsx_sheet_rows),
        )

    def close(self) -> None:
        self.engines.dispose()
        self.targets.dispose()
        self.store.close()


FILTERABLE_FILE_KINDS = frozenset({"bool", "int", "float", "decimal", "datetime", "date", "str"})


def filter_fields(dataset: Dataset) -> Mapping[str, str]:
    """What a filter may name, with the kind its values are coerced to: the columns of a
    table or of files (scalar columns only), or any dotted path of documents."""
    if dataset.kind is DatasetKind.DOCUMENTS:
        return DocumentPaths()
    kinds = {f["name"]: f.get("kind", "unknown") for f in dataset.fields}
    if dataset.kind is DatasetKind.FILES:
        return {n: k for n, k in kinds.items() if k in FILTERABLE_FILE_KINDS}
    return kinds


def selection_for(task: Task, dataset: Dataset) -> Selection:
    """The source columns and filter a task reads (from its plan; the filter's values
    coerced to the fields' kinds)."""
    return Selection(
        columns=list(task.plan.source_columns),
        filter=validate_filter(list(task.plan.filter), filter_fields(dataset)),
        snapshot=task.snapshot_id,  # the snapshot every partition imports (or reads), if any
    )


def columns_for(task: Task, dataset: Dataset | None) -> list[Column]:
    """The output columns of a task: names after renames, kinds and types from the source."""
    fields = {f["name"]: f for f in dataset.fields} if dataset else {}
    sources = list(task.plan.source_columns)
    if len(sources) != len(task.columns):  # documents flattened to a merged header
        sources = list(task.columns)
    out = []
    for src, name in zip(sources, task.columns, strict=True):
        f = fields.get(src, {})
        out.append(Column(name, f.get("kind", "unknown"), f.get("type") or "unknown"))
    return out


def _own_dirs(settings: Settings) -> list[Path]:
    """The local storage, where every project's files are: never a source, even under a
    source directory (the data directory's own files are refused by the policy too); and
    the consistent copies of SQLite sources (docs/consistency.md)."""
    own = [settings.snapshot_path]
    if settings.files_url.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        own.append(Path(unquote(urlsplit(settings.files_url).path)))
    return own


def _admin_token_file(data_dir: Path) -> str:
    """The administrator token: generated once at first start, kept in the data directory."""
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = "exa_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token
