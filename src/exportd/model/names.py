"""What names look like: output formats, file names and storage prefixes, as the service
checks them and as the OpenAPI document states them (one regular expression each)."""

from __future__ import annotations

FORMAT_NAMES = ("csv", "tsv", "jsonl", "json", "parquet", "xlsx")

MAX_SEGMENTS = 8
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._=-]{0,99}"
PREFIX_PATTERN = f"^{_SEGMENT}(/{_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}$"
"""A storage prefix: 1-8 `/`-separated segments of letters, digits and `._=-`, each
starting with a letter or digit (no `..`, no leading `/`)."""

FILE_NAME_PATTERN = r"^(?!manifest\.json$)(?!.*\.\.)\w(?:[\w .()+,=@-]{0,253}[\w.()+,=@-])?$"
"""A file name: 1-255 letters, digits, spaces or `._-()+,=@`, starting with a letter or
digit, not ending in a space, no `..`, not `manifest.json`."""
