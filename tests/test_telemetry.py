"""The hub sends no OpenTelemetry data, whatever providers or OTEL_* variables its process has.

FastAPI traces requests with the process's global tracer provider and, with
FASTAPI_OTEL_AUTO_CONFIGURE=true, adds exporters from the environment: request paths,
dataset names and error messages would leave the hub (khazna/app.py, NO_TELEMETRY).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace

from khazna.app import create_app
from khazna.hub import Hub
from tests.conftest import Api


class Recorder(trace.TracerProvider):
    """A tracer provider, as an SDK or an agent would install one, that notes each span."""

    def __init__(self) -> None:
        self.spans: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _Tracer(self.spans)


class _Tracer(trace.Tracer):
    def __init__(self, spans: list[str]) -> None:
        self.spans = spans

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.spans.append(name)
        return trace.INVALID_SPAN

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        self.spans.append(name)
        yield trace.INVALID_SPAN


def test_requests_make_no_spans_even_with_a_tracer_provider_installed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: recorder)
    # What FastAPI does by default with such a provider: a span per request, and one for
    # each of its steps.
    bare = FastAPI()
    bare.add_api_route("/ping", lambda: {"ok": True})
    with TestClient(bare) as http:
        assert http.get("/ping").json() == {"ok": True}
    assert recorder.spans == [
        "GET",
        "fastapi.dependencies",
        "fastapi.endpoint",
        "fastapi.serialization",
    ]
    recorder.spans.clear()

    assert api.http.get("/api/v1/search").status_code == 200
    r = api.http.post("/api/v1/sql", json={"sql": "SELECT 1 AS one"}, headers=api.auth(api.admin))
    assert r.json()["rows"] == [[1]]
    assert api.http.post("/api/v1/sql", json={"sql": "DROP TABLE x"}).status_code == 400
    assert recorder.spans == []


def test_otel_variables_add_no_exporter(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    # Without NO_TELEMETRY FastAPI would try to set up OTLP exporters at startup (and, the
    # exporter packages not being installed, log that it failed).
    with caplog.at_level(logging.DEBUG), TestClient(create_app(hub)) as http:
        assert http.get("/health").status_code == 200
    assert [r.getMessage() for r in caplog.records if "telemetry" in r.getMessage()] == []
