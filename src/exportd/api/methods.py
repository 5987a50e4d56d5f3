"""The `Allow` header of a 405: every method the request's path serves.

Starlette answers a method a path does not serve from the first route whose path matches,
and FastAPI makes one route per method, so its `Allow` names one method of a path that
serves several (GET and DELETE of a task, GET and POST of the exports). The header is
rebuilt here from every route that matches the path."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods of every route whose path matches the request's (sorted)."""
    methods: set[str] = set()
    for route in _leaves(routes):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _leaves(routes: Iterable[BaseRoute]) -> Iterable[BaseRoute]:
    """Routes, with included routers (FastAPI keeps them as branches) walked into."""
    for route in routes:
        inner: Any = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaves(inner.routes)
        else:
            yield route
