"""The pages people open in a browser: the dashboard (`/`, `/dashboard`), Swagger UI
(`/docs`) and ReDoc (`/redoc`), all from assets shipped with exportd (no CDN: they work on
a machine without internet).

The dashboard is static HTML, CSS and ES modules shipped in the package (no CDN, no build
step): everything it shows comes from the `/v1` API, called with the token the person
signs in with. The page itself holds no data and needs no token, so it is served to
anyone; the API decides what each token may see."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
ASSETS_PATH = "/dashboard/static"
# Swagger UI's and ReDoc's bundles, as the fastapi-offline package ships them
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
DOCS_ASSETS_PATH = "/docs/static"

# The page runs only its own scripts and talks only to its own origin: an injected
# script (a file name, an error message) could neither run nor send a token elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Swagger UI starts from an inline script; both pages may fetch only from this origin
# (ReDoc's bundle would load a logo from its vendor's CDN: refused here, it hides it).
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


class Assets(StaticFiles):
    """Static files that a browser checks again on each load (a 304 while unchanged), so
    that a page of an upgraded exportd never runs the previous version's modules."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _page() -> HTMLResponse:
    return HTMLResponse((DASHBOARD_DIR / "index.html").read_text(), headers=PAGE_HEADERS)


@router.get("/")
def dashboard() -> HTMLResponse:
    """The dashboard; its asset URLs are relative, so it works at `/` and `/dashboard`."""
    return _page()


@router.get("/dashboard")
def dashboard_alias() -> HTMLResponse:
    return _page()


def add_dashboard(app: FastAPI) -> None:
    """Serve the dashboard page and its static assets."""
    app.include_router(router)
    app.mount(ASSETS_PATH, Assets(directory=DASHBOARD_DIR / "static"), name="dashboard-assets")


def add_api_docs(app: FastAPI) -> None:
    """Swagger UI at `/docs` and ReDoc at `/redoc`, FastAPI's own pages pointed at the
    local bundles (the app is built with `docs_url=None, redoc_url=None`)."""
    app.mount(DOCS_ASSETS_PATH, Assets(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} · Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.svg",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(DOCS_HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} · ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.svg",
            with_google_fonts=False,
        )
        page.headers.update(DOCS_HEADERS)
        return page
