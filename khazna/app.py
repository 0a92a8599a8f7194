"""The ASGI application: HTTP in, calls on the hub's rooms out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig

from khazna import __version__
from khazna.api import access, audit, errors, indices, routes, stac, tables
from khazna.config import Settings
from khazna.hub import Hub
from khazna.web import pages

# FastAPI traces requests, counts them and logs exceptions (with their messages) to any
# OpenTelemetry provider the process has, and FASTAPI_OTEL_AUTO_CONFIGURE=true adds
# exporters from OTEL_* variables: request paths, dataset names and error messages would
# leave the hub for wherever those point. A sovereign hub sends nothing anywhere unless
# its own settings say so; it has no telemetry setting yet, so it sends none. (It also
# spares each request a look at the global providers.)
NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "auto_configure": False,
}


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
        telemetry=NO_TELEMETRY,
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
