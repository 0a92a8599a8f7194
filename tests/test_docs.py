"""The reference documents in docs/ keep up with the code, as Datasette's tests/test_docs.py.

A new route, error code, command, option or ``KHAZNA_*`` variable fails here until it is
documented; a documented one that no longer exists fails here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import typer

from khazna import cli
from khazna.api.errors import _HTTP_CODES
from khazna.app import create_app
from khazna.catalog.uploads import OffsetMismatch, UploadBusy
from khazna.client import DEFAULT_URL, Client
from khazna.config import Settings
from khazna.errors import KhaznaError
from khazna.hub import Hub
from khazna.storage.blobstore import LocalBlobStore

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
API_MD = (DOCS / "api.md").read_text(encoding="utf-8")
CLI_MD = (DOCS / "cli.md").read_text(encoding="utf-8")
CONFIG_MD = (DOCS / "configuration.md").read_text(encoding="utf-8")


def _route_contexts(routes: list[Any]) -> Iterable[Any]:
    # Recent FastAPI keeps included routers whole in app.routes and walks into them with
    # iter_route_contexts; older FastAPI copies every route into app.routes.
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    return walk(routes) if walk is not None else routes


def _duplicates(items: Iterable[Any]) -> list[Any]:
    seen: set[Any] = set()
    twice: set[Any] = set()
    for item in items:
        (twice if item in seen else seen).add(item)
    return sorted(twice)


# configuration.md ---------------------------------------------------------------------

_VARIABLE = re.compile(r"\bKHAZNA_[A-Z][A-Z0-9_]*")
# A row of the variables table: | `KHAZNA_X` | meaning | default | unit |
_VARIABLE_ROW = re.compile(r"^\| `(KHAZNA_[A-Z0-9_]+)` \|(.*)\|$", re.MULTILINE)


def _variables_in_source() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "khazna").rglob("*.py"):
        found.update(_VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def _documented_variables() -> dict[str, list[str]]:
    """Variable name -> its cells after the name: meaning, default, unit."""
    rows = _VARIABLE_ROW.findall(CONFIG_MD)
    assert _duplicates(name for name, _ in rows) == []
    return {name: [c.strip() for c in cells.split("|")] for name, cells in rows}


def test_every_variable_the_code_reads_is_documented() -> None:
    in_source = _variables_in_source()
    assert {"KHAZNA_HOME", "KHAZNA_URL", "KHAZNA_TOKEN"} <= in_source  # the scan works
    assert sorted(in_source - set(_documented_variables())) == []


def test_every_documented_variable_exists_in_the_code() -> None:
    assert sorted(set(_documented_variables()) - _variables_in_source()) == []


def test_documented_defaults_are_the_code_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _variables_in_source():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env()
    assert settings.home == tmp_path / "khazna-data"
    assert settings.database_url == f"sqlite:///{tmp_path / 'khazna-data' / 'khazna.db'}"
    assert settings.body_idle_timeout_s == int(settings.body_idle_timeout_s)

    def default(name: str) -> str:
        # The default cell starts with the value in backticks: `604800` (7 days)
        return _documented_variables()[name][1].split(" ")[0]

    assert default("KHAZNA_HOME") == "`./khazna-data`"
    assert default("KHAZNA_DATABASE_URL") == "`sqlite:///$KHAZNA_HOME/khazna.db`"
    assert default("KHAZNA_MAX_UPLOAD_BYTES") == f"`{settings.max_upload_bytes}`"
    assert default("KHAZNA_UPLOAD_SESSION_TTL_S") == f"`{settings.upload_session_ttl_s}`"
    assert default("KHAZNA_BODY_IDLE_TIMEOUT_S") == f"`{int(settings.body_idle_timeout_s)}`"
    assert default("KHAZNA_URL") == f"`{DEFAULT_URL}`"


def test_the_documented_hub_folder_is_the_one_the_hub_makes(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path)
    for folder in (settings.blob_dir, settings.tmp_dir, settings.uploads_dir):
        assert f"\n  {folder.relative_to(settings.home)}/" in CONFIG_MD
    assert "\n  khazna.db " in CONFIG_MD
    sha = "abcd" + "0" * 60
    blob = LocalBlobStore(settings.blob_dir, settings.tmp_dir).path_of(sha)
    assert blob.relative_to(settings.home).parts == ("blobs", "ab", "cd", sha)
    assert "\n  blobs/ab/cd/abcd… " in CONFIG_MD


def test_push_resume_state_is_where_the_docs_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Client() as hub:
        assert hub.state_dir == tmp_path / "cache" / "khazna"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with Client() as hub:
        assert hub.state_dir == tmp_path / "home" / ".cache" / "khazna"
    for doc in (CLI_MD, CONFIG_MD):
        assert "`$XDG_CACHE_HOME/khazna/uploads.json`" in doc
        assert "`~/.cache/khazna/uploads.json`" in doc


# api.md: routes -----------------------------------------------------------------------

# A route's heading: ### `PUT /api/v1/datasets/{org}/{name}/files/{file}`
_ROUTE_HEADING = re.compile(
    r"^#{2,4} `(GET|HEAD|POST|PUT|PATCH|DELETE) (/api/v1/\S+)`$", re.MULTILINE
)


@pytest.fixture
def api_routes(tmp_path: Path) -> Iterator[set[str]]:
    """Every "METHOD /api/v1/..." the app answers; HEAD only where it is its own route
    (Starlette adds HEAD to every plain GET route, e.g. the OpenAPI document)."""
    hub = Hub(Settings.from_env(tmp_path))
    routes: set[str] = set()
    for route in _route_contexts(create_app(hub).routes):
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is None or methods is None or not path.startswith("/api/v1/"):
            continue
        if "GET" in methods:
            methods = methods - {"HEAD"}
        routes.update(f"{method} {path}" for method in methods)
    yield routes
    hub.close()


def _documented_routes() -> list[str]:
    return [f"{method} {path}" for method, path in _ROUTE_HEADING.findall(API_MD)]


def test_every_api_route_is_documented(api_routes: set[str]) -> None:
    # The walk over the app found the routes of the contract, not just a few.
    assert {
        "GET /api/v1/health",
        "GET /api/v1/datasets/{org}/{name}/files/{file}",
        "HEAD /api/v1/datasets/{org}/{name}/files/{file}",
        "PUT /api/v1/datasets/{org}/{name}/files/{file}",
        "GET /api/v1/search",
    } <= api_routes
    assert sorted(api_routes - set(_documented_routes())) == []


def test_every_documented_route_exists(api_routes: set[str]) -> None:
    documented = _documented_routes()
    assert _duplicates(documented) == []
    assert sorted(set(documented) - api_routes) == []


# api.md: errors -----------------------------------------------------------------------

# A row of the error table: | `code` | 409 | when |
_ERROR_ROW = re.compile(r"^\| `([a-z_]+)` \| (\d{3}) \|", re.MULTILINE)


def _error_classes(cls: type[KhaznaError] = KhaznaError) -> Iterator[type[KhaznaError]]:
    if cls.__module__.startswith("khazna."):
        yield cls
    for sub in cls.__subclasses__():
        yield from _error_classes(sub)


def _documented_errors() -> dict[str, int]:
    rows = _ERROR_ROW.findall(API_MD)
    assert _duplicates(code for code, _ in rows) == []
    return {code: int(status) for code, status in rows}


def test_every_error_code_is_documented_with_its_status() -> None:
    classes = list(_error_classes())
    assert {KhaznaError, OffsetMismatch, UploadBusy} <= set(classes)  # the walk finds all
    expected = {cls.code: cls.status for cls in classes}
    documented = _documented_errors()
    wrong = {
        code: (status, documented.get(code))
        for code, status in expected.items()
        if documented.get(code) != status
    }
    assert wrong == {}  # code: (status in the code, status in api.md)


def test_framework_errors_are_documented_with_their_code() -> None:
    # "... take their code from their status: 400 `bad_request`, 401 `unauthorized`, ..."
    text = " ".join(API_MD.split())
    missing = [f"{s} `{c}`" for s, c in _HTTP_CODES.items() if f"{s} `{c}`" not in text]
    assert missing == []


def test_every_documented_error_code_exists_with_that_status() -> None:
    known = {code: status for status, code in _HTTP_CODES.items()}
    known.update({cls.code: cls.status for cls in _error_classes()})
    wrong = {
        code: status for code, status in _documented_errors().items() if known.get(code) != status
    }
    assert wrong == {}


# cli.md -------------------------------------------------------------------------------

# A command's heading: ## `khazna users add`
_COMMAND_HEADING = re.compile(r"^## `(khazna [a-z -]+)`$", re.MULTILINE)


def _commands(command: Any, words: tuple[str, ...] = ("khazna",)) -> Iterator[tuple[str, Any]]:
    """Every command one can run, with its full name; groups are walked, not listed.

    Duck-typed: recent Typer builds on its own copy of click's classes.
    """
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for name, sub in subcommands.items():
            yield from _commands(sub, (*words, name))
    else:
        yield " ".join(words), command


def _sections() -> dict[str, str]:
    """Command name -> the text of its section in cli.md."""
    headings = list(_COMMAND_HEADING.finditer(CLI_MD))
    assert _duplicates(h.group(1) for h in headings) == []
    ends = [h.start() for h in headings[1:]] + [len(CLI_MD)]
    return {h.group(1): CLI_MD[h.end() : end] for h, end in zip(headings, ends, strict=True)}


CLI_COMMANDS = dict(_commands(typer.main.get_command(cli.app)))


def test_every_command_is_documented() -> None:
    assert {"khazna serve", "khazna users add", "khazna push"} <= set(CLI_COMMANDS)
    assert sorted(set(CLI_COMMANDS) - set(_sections())) == []


def test_every_documented_command_exists() -> None:
    assert sorted(set(_sections()) - set(CLI_COMMANDS)) == []


@pytest.mark.parametrize("name", sorted(CLI_COMMANDS))
def test_every_option_is_documented_with_its_default(name: str) -> None:
    section = _sections()[name]
    for param in CLI_COMMANDS[name].params:
        if param.param_type_name != "option" or param.hidden:
            continue
        for opt in param.opts:
            assert f"`{opt}`" in section, f"{name}: {opt}"
        if param.envvar:
            assert f"`${param.envvar}`" in section, f"{name}: {param.envvar}"
        if param.default not in (None, False, ""):
            # The option's row in the table: | `-o`, `--output` | `.` | ...
            rows = [line for line in section.splitlines() if f"`{param.opts[-1]}` |" in line]
            assert len(rows) == 1, f"{name}: one table row for {param.opts[-1]}"
            row = rows[0]
            assert f"| `{param.default}` |" in row, f"{name}: default of {param.opts[-1]}"


# web.md and the README's pictures -----------------------------------------------------

WEB_MD = (DOCS / "web.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")
# A row of the pages table: | `GET /datasets/{org}/{name}` | what it shows |
_PAGE_ROW = re.compile(r"^\| `(GET|POST|PUT) (/[^`?]*)(?:\?[^`]*)?` \|", re.MULTILINE)


def _page_routes() -> set[str]:
    from khazna.web import pages

    return {
        f"{method} {route.path}"
        for route in pages.router.routes
        for method in getattr(route, "methods", ())
        if method != "HEAD"
    }


def test_every_page_is_documented_and_every_documented_page_exists() -> None:
    documented = {f"{m} {p}" for m, p in _PAGE_ROW.findall(WEB_MD)}
    assert {"GET /", "POST /sql"} <= documented  # the scan works
    assert sorted(_page_routes() ^ documented) == []


def test_the_readme_shows_every_screenshot_and_only_existing_ones() -> None:
    shown = set(re.findall(r"\(docs/screenshots/([\w.-]+\.png)\)", README))
    on_disk = {p.name for p in (DOCS / "screenshots").glob("*.png")}
    assert len(on_disk) >= 6
    assert sorted(shown ^ on_disk) == []
