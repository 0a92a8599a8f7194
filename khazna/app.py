"""The ASGI application: HTTP in, calls on the hub's rooms out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from khazna import __version__
from khazna.api import access, audit, errors, indices, routes, stac, tables
from khazna.config import Settings
from khazna.hub import Hub
from khazna.web import pages


def create_app(hub: Hub | None = None) -> FastAPI:
    the_hub = hub or Hub(Settings.from_env())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        the_hub.start_workers()
        try:
            yield
        finally:
            the_hub.stop_workers()

    app = FastAPI(
        lifespan=lifespan,
        title="Khazna",
        version=__version__,
        summary="A sovereign data hub: publish, find, query and download datasets.",
        docs_url="/docs",
        openapi_url="/api/v1/openapi.json",
    )
    app.state.hub = the_hub
    errors.install(app, pages.error_page, pages.is_page)
    app.include_router(routes.router)
    app.include_router(tables.router)
    app.include_router(access.router)
    app.include_router(audit.router)
    app.include_router(stac.router)
    app.include_router(indices.router)
    app.add_api_route("/health", routes.health, include_in_schema=False)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
