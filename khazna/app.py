"""The ASGI application: HTTP in, calls on the hub's rooms out."""

from __future__ import annotations

from fastapi import FastAPI

from khazna import __version__
from khazna.api import errors, routes
from khazna.config import Settings
from khazna.hub import Hub
from khazna.web import pages


def create_app(hub: Hub | None = None) -> FastAPI:
    hub = hub or Hub(Settings.from_env())
    app = FastAPI(
        title="Khazna",
        version=__version__,
        summary="A sovereign data hub: publish, find, query and download datasets.",
        docs_url="/docs",
        openapi_url="/api/v1/openapi.json",
    )
    app.state.hub = hub
    errors.install(app)
    app.include_router(routes.router)
    app.add_api_route("/health", routes.health, include_in_schema=False)
    app.include_router(pages.router)
    return app
