"""Limits of this server's settings, stated in its OpenAPI document: a request the
document allows is one the server accepts."""

from __future__ import annotations

from typing import Any

from exportd.settings import Settings


def state_server_limits(schema: dict[str, Any], settings: Settings) -> None:
    """`parallelism` at most `EXPORTD_MAX_PARALLELISM` (the model's own bound is the
    ceiling of every server)."""
    props = schema.get("components", {}).get("schemas", {}).get("ExportRequest", {})
    spec = props.get("properties", {}).get("parallelism", {})
    for branch in [spec, *spec.get("anyOf", [])]:
        if branch.get("type") == "integer":
            branch["maximum"] = min(
                branch.get("maximum", settings.max_parallelism), settings.max_parallelism
            )
