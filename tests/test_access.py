"""Tokens, memberships, access requests and quotas, as their users meet them."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from khazna.access.quotas import Quotas
from khazna.app import create_app
from khazna.config import Settings
from khazna.hub import Hub
from tests.conftest import DATA, Api, LiveServer
from tests.test_cli import run

API = "/api/v1"
ORG = "ministere-sante"
REGIONS = DATA / "tables" / "morocco_regions_rgph2024.csv"


def error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == code
    return body


def publish(api: Api, name: str, access: str, *, wait: bool = True) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": name, "access": access},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201, r.text
    r = api.http.put(
        f"{API}/datasets/{ORG}/{name}/files/regions.csv",
        content=REGIONS.read_bytes(),
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while wait and api.hub.jobs.get(r.json()["job"]["id"])["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def new_token(api: Api, owner: str, **body: Any) -> dict[str, Any]:
    r = api.http.post(f"{API}/tokens", json=body, headers=api.auth(owner))
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


# tokens -------------------------------------------------------------------------------


def test_a_token_is_shown_once_listed_without_its_secret_and_revoked_at_once(api: Api) -> None:
    made = new_token(api, api.outsider, label="portable", scope="read", ttl=3600)
    secret = made.pop("token")
    assert secret.startswith("kz_") and len(secret) == 46
    assert made["label"] == "portable" and made["scope"] == "read"
    assert (made["state"], made["datasets"], made["organizations"]) == ("active", None, None)
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(seconds=3590) < expires - datetime.now(UTC) <= timedelta(seconds=3600)
    assert api.http.get(f"{API}/me", headers=api.auth(secret)).json()["name"] == "startup"

    listed = api.http.get(f"{API}/tokens", headers=api.auth(api.outsider)).json()["tokens"]
    assert [t["label"] for t in listed] == ["portable", "created with the user"]
    assert listed[0]["id"] == made["id"]
    assert listed[0]["last_used_at"] is not None
    assert set(listed[0]) == {
        "id",
        "label",
        "prefix",
        "scope",
        "state",
        "datasets",
        "organizations",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }
    assert secret not in str(listed) and hashlib.sha256(secret.encode()).hexdigest() not in str(
        listed
    )
    # Another user's token does not exist for this one.
    r = api.http.delete(f"{API}/tokens/{made['id']}", headers=api.auth(api.editor))
    assert error(r, 404, "not_found")["message"] == f"no token {made['id']}"

    r = api.http.delete(f"{API}/tokens/{made['id']}", headers=api.auth(api.outsider))
    assert r.status_code == 204
    r = api.http.get(f"{API}/search", headers=api.auth(secret))
    assert error(r, 401, "unauthorized")["message"].startswith("this API token was revoked at 20")
    listed = api.http.get(f"{API}/tokens", headers=api.auth(api.outsider)).json()["tokens"]
    assert listed[0]["state"] == "revoked"


def test_an_expired_token_is_refused_with_its_expiry(api: Api) -> None:
    made = new_token(api, api.outsider, ttl=1)
    assert api.http.get(f"{API}/me", headers=api.auth(made["token"])).status_code == 200
    time.sleep(1.1)
    r = api.http.get(f"{API}/me", headers=api.auth(made["token"]))
    assert error(r, 401, "unauthorized")["message"] == (
        f"this API token expired at {made['expires_at']}"
    )
    listed = api.http.get(f"{API}/tokens", headers=api.auth(api.outsider)).json()["tokens"]
    assert listed[0]["state"] == "expired"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scope": "write"}, "scope: Input should be 'read' or 'read-write'"),
        ({"ttl": 0}, "ttl: Input should be greater than or equal to 1"),
        ({"expires_at": "2001-01-01"}, "expires_at must be in the future; got '2001-01-01'"),
        (
            {"expires_at": "bientôt"},
            "expires_at must be a date (2026-12-31) or an ISO 8601 date and time; got 'bientôt'",
        ),
        ({"expires_at": "2099-01-01", "ttl": 60}, "give expires_at or ttl, not both"),
        ({"datasets": ["nulle-part/rien"]}, "no dataset nulle-part/rien"),
        ({"organizations": []}, "a restricted token needs at least one dataset or organization"),
    ],
)
def test_bad_token_requests_say_what_is_wrong(api: Api, body: dict[str, Any], message: str) -> None:
    r = api.http.post(f"{API}/tokens", json=body, headers=api.auth(api.outsider))
    assert r.status_code in (400, 404)
    assert r.json()["error"]["message"] == message


def test_tokens_need_a_wide_token(api: Api) -> None:
    assert error(api.http.get(f"{API}/tokens"), 401, "unauthorized")["message"] == (
        "managing API tokens needs a signed-in user; send an API token"
    )
    publish(api, "ouvert", "public", wait=False)
    narrow = new_token(api, api.editor, datasets=[f"{ORG}/ouvert"])
    r = api.http.post(f"{API}/tokens", json={}, headers=api.auth(narrow["token"]))
    assert error(r, 403, "forbidden")["message"] == (
        "managing API tokens needs a token that is not restricted to datasets"
    )
    reader = new_token(api, api.editor, scope="read")
    r = api.http.post(f"{API}/tokens", json={}, headers=api.auth(reader["token"]))
    assert error(r, 403, "forbidden")["message"] == (
        "POST /api/v1/tokens needs a read-write token; this one has scope 'read'"
    )
    assert api.http.get(f"{API}/tokens", headers=api.auth(reader["token"])).status_code == 200


def test_a_token_restricted_to_a_dataset_writes_there_and_sees_nothing_else(api: Api) -> None:
    publish(api, "permis", "public", wait=False)
    publish(api, "autre", "public", wait=False)
    narrow = new_token(api, api.editor, datasets=[f"{ORG}/permis"])
    assert (narrow["datasets"], narrow["organizations"]) == ([f"{ORG}/permis"], [])
    headers = api.auth(narrow["token"])
    r = api.http.put(f"{API}/datasets/{ORG}/permis/files/notes.txt", content=b"ok", headers=headers)
    assert r.status_code == 200
    r = api.http.put(f"{API}/datasets/{ORG}/autre/files/notes.txt", content=b"x", headers=headers)
    assert error(r, 404, "not_found")["message"] == f"no dataset {ORG}/autre"
    r = api.http.post(f"{API}/datasets", json={"org": ORG, "name": "neuf"}, headers=headers)
    assert error(r, 403, "forbidden")["message"] == (
        f"creating datasets in {ORG!r} is outside what this token is restricted to"
    )
    found = api.http.get(f"{API}/search", headers=headers).json()
    assert (found["count"], found["facets"]["org"]) == (1, {ORG: 1})


# organization members -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status", "message"),
    [
        ("anonymous", 401, f"managing members of {ORG!r} needs its admin role; send an API token"),
        ("outsider", 403, f"managing members of {ORG!r} needs its admin role"),
        ("editor", 403, f"managing members of {ORG!r} needs its admin role"),
        ("org_admin", 204, None),
        ("admin", 204, None),
    ],
)
def test_only_organization_admins_and_hub_admins_change_members(
    api: Api, who: str, status: int, message: str | None
) -> None:
    _, org_admin = api.hub.accounts.add_user("directrice")
    r = api.http.put(
        f"{API}/organizations/{ORG}/members",
        json={"user": "directrice", "role": "admin"},
        headers=api.auth(api.admin),
    )
    assert r.status_code == 204
    token = {
        "anonymous": None,
        "outsider": api.outsider,
        "editor": api.editor,
        "org_admin": org_admin,
        "admin": api.admin,
    }[who]
    r = api.http.put(
        f"{API}/organizations/{ORG}/members",
        json={"user": "startup", "role": "member"},
        headers=api.auth(token) if token else {},
    )
    assert r.status_code == status, r.text
    if message is not None:
        assert r.json()["error"]["message"] == message
    roles = api.http.get(f"{API}/me", headers=api.auth(api.outsider)).json()["organizations"]
    assert roles == ({ORG: "member"} if status == 204 else {})


# access requests ----------------------------------------------------------------------


def test_a_startup_asks_the_publisher_approves_then_refuses(api: Api) -> None:
    publish(api, "dossiers", "restricted")
    startup, nadia = api.auth(api.outsider), api.auth(api.editor)
    url = f"{API}/datasets/{ORG}/dossiers/access-requests"
    rows = f"{API}/tables/{ORG}/dossiers/regions.csv/rows?limit=1"
    sql = {"sql": "SELECT count(*) FROM ministere_sante_dossiers_regions"}
    assert api.http.get(rows, headers=startup).status_code == 403
    assert api.http.post(f"{API}/sql", json=sql, headers=startup).status_code == 400

    r = api.http.post(url, json={"purpose": "  étude des ménages  "}, headers=startup)
    assert r.status_code == 201, r.text
    asked = r.json()
    assert {k: asked[k] for k in ("org", "dataset", "user", "purpose", "state")} == {
        "org": ORG,
        "dataset": "dossiers",
        "user": "startup",
        "purpose": "étude des ménages",
        "state": "pending",
    }
    assert (asked["reason"], asked["expires_at"], asked["decided_by"]) == (None, None, None)
    again = api.http.post(url, json={"purpose": "encore"}, headers=startup)
    assert error(again, 409, "conflict")["message"] == (
        f"your access request {asked['id']} for {ORG}/dossiers is pending already"
    )
    # The requester sees it; only the publisher lists the dataset's requests.
    mine = api.http.get(f"{API}/me/access-requests", headers=startup).json()["requests"]
    assert [(m["id"], m["state"]) for m in mine] == [(asked["id"], "pending")]
    assert error(api.http.get(url, headers=startup), 403, "forbidden")["message"] == (
        f"listing the access requests of {ORG}/dossiers needs the editor or admin role in {ORG!r}"
    )
    listed = api.http.get(url, params={"state": "pending"}, headers=nadia).json()["requests"]
    assert [m["id"] for m in listed] == [asked["id"]]
    inbox = api.http.get(f"{API}/access-requests?state=pending", headers=nadia).json()
    assert [m["id"] for m in inbox["requests"]] == [asked["id"]]
    assert api.http.get(f"{API}/access-requests", headers=startup).json() == {"requests": []}
    r = api.http.post(f"{url}/startup/approve", json={}, headers=startup)
    assert error(r, 403, "forbidden")["message"] == (
        f"approving access requests for {ORG}/dossiers needs the editor or admin role in {ORG!r}"
    )

    r = api.http.post(f"{url}/startup/approve", json={"until": "2099-12-31"}, headers=nadia)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["expires_at"]) == ("approved", "2100-01-01T00:00:00Z")
    assert r.json()["decided_by"] == "nadia"
    # In effect at once, on every path.
    assert api.http.get(rows, headers=startup).json()["total"] == 12
    assert api.http.post(f"{API}/sql", json=sql, headers=startup).json()["rows"] == [[12]]
    assert api.http.get(
        f"{API}/datasets/{ORG}/dossiers/files/regions.csv", headers=startup
    ).content == (REGIONS.read_bytes())
    r = api.http.post(url, json={"purpose": "encore"}, headers=startup)
    assert error(r, 409, "conflict")["message"] == f"you can already read {ORG}/dossiers"

    r = api.http.post(
        f"{url}/startup/refuse", json={"reason": "données nominatives"}, headers=nadia
    )
    assert (r.json()["state"], r.json()["reason"]) == ("refused", "données nominatives")
    assert api.http.get(rows, headers=startup).status_code == 403
    assert api.http.post(f"{API}/sql", json=sql, headers=startup).status_code == 400
    mine = api.http.get(f"{API}/me/access-requests", headers=startup).json()["requests"]
    assert [(m["state"], m["reason"]) for m in mine] == [("refused", "données nominatives")]
    # The request, the approval and the refusal are in the audit log, by whom they were made.
    log = api.http.get(f"{API}/audit", params={"limit": 1000}, headers=api.auth(api.admin)).json()[
        "entries"
    ]
    decisions = [
        (e["actor"], e["action"], e["dataset"], e["detail"])
        for e in reversed(log)
        if e["action"].startswith("access.")
    ]
    assert decisions == [
        ("startup", "access.request", "dossiers", {"purpose": "  étude des ménages  "}),
        (
            "nadia",
            "access.approve",
            "dossiers",
            {"user": "startup", "until": "2100-01-01T00:00:00+00:00"},
        ),
        (
            "nadia",
            "access.refuse",
            "dossiers",
            {"user": "startup", "reason": "données nominatives"},
        ),
    ]


def test_an_approval_ends_at_its_expiry(api: Api) -> None:
    publish(api, "dossiers", "restricted")
    startup, nadia = api.auth(api.outsider), api.auth(api.editor)
    url = f"{API}/datasets/{ORG}/dossiers/access-requests"
    rows = f"{API}/tables/{ORG}/dossiers/regions.csv/rows?limit=1"
    assert api.http.post(url, json={"purpose": "stage"}, headers=startup).status_code == 201
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    r = api.http.post(f"{url}/startup/approve", json={"until": soon}, headers=nadia)
    assert r.status_code == 200, r.text
    assert api.http.get(rows, headers=startup).status_code == 200
    time.sleep(1.6)
    assert error(api.http.get(rows, headers=startup), 403, "forbidden")["message"].startswith(
        f"dataset {ORG}/dossiers is restricted: its data needs an approved access request"
    )
    mine = api.http.get(f"{API}/me/access-requests?state=expired", headers=startup).json()
    assert [m["state"] for m in mine["requests"]] == ["expired"]
    # A new request may follow an expired approval.
    assert api.http.post(url, json={"purpose": "suite"}, headers=startup).status_code == 201


@pytest.mark.parametrize(
    ("dataset", "token", "body", "status", "message"),
    [
        ("dossiers", None, {"purpose": "x"}, 401,
         "asking for access needs a signed-in user; send an API token"),
        ("dossiers", "outsider", {"purpose": "   "}, 400, "purpose must say something"),
        ("ouvert", "outsider", {"purpose": "x"}, 409,
         f"dataset {ORG}/ouvert is public: access requests are for restricted datasets"),
        ("secret", "outsider", {"purpose": "x"}, 404, f"no dataset {ORG}/secret"),
        ("dossiers", "editor", {"purpose": "x"}, 409, f"you can already read {ORG}/dossiers"),
    ],
)  # fmt: skip
def test_requests_that_cannot_be_made(
    api: Api, dataset: str, token: str | None, body: dict[str, str], status: int, message: str
) -> None:
    for name, level in (("dossiers", "restricted"), ("ouvert", "public"), ("secret", "private")):
        r = api.http.post(
            f"{API}/datasets",
            json={"org": ORG, "name": name, "access": level},
            headers=api.auth(api.editor),
        )
        assert r.status_code == 201
    headers = {} if token is None else api.auth(getattr(api, token))
    r = api.http.post(f"{API}/datasets/{ORG}/{dataset}/access-requests", json=body, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["message"] == message


def test_deciding_on_a_request_that_does_not_exist(api: Api) -> None:
    r = api.http.post(
        f"{API}/datasets",
        json={"org": ORG, "name": "dossiers", "access": "restricted"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201
    url = f"{API}/datasets/{ORG}/dossiers/access-requests/startup"
    r = api.http.post(f"{url}/refuse", json={"reason": "non"}, headers=api.auth(api.editor))
    assert (
        error(r, 404, "not_found")["message"]
        == f"no access request from 'startup' for {ORG}/dossiers"
    )
    r = api.http.post(f"{url}/refuse", json={"reason": ""}, headers=api.auth(api.editor))
    assert error(r, 400, "bad_request")["message"] == "reason must say something"
    r = api.http.post(f"{url}/approve", json={"until": "1999-01-01"}, headers=api.auth(api.editor))
    assert (
        error(r, 400, "bad_request")["message"] == "until must be in the future; got '1999-01-01'"
    )


# quotas -------------------------------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Api]:
    settings = dataclasses.replace(
        Settings.from_env(tmp_path / "hub"),
        rate_limit_per_minute=4,
        daily_download_bytes=REGIONS.stat().st_size + 100,
    )
    hub = Hub(settings)
    _, admin = hub.accounts.add_user("admin", admin=True)
    _, outsider = hub.accounts.add_user("startup")
    with TestClient(create_app(hub), raise_server_exceptions=False) as http:
        yield Api(http, hub, admin, admin, outsider)
    hub.close()


def test_the_rate_limit_answers_429_with_retry_after_per_token(limited: Api) -> None:
    for _ in range(4):
        assert (
            limited.http.get(f"{API}/search", headers=limited.auth(limited.outsider)).status_code
            == 200
        )
    r = limited.http.get(f"{API}/search", headers=limited.auth(limited.outsider))
    body = error(r, 429, "over_quota")
    assert body["message"].startswith(
        "rate limit: at most 4 requests per minute (KHAZNA_RATE_LIMIT_PER_MINUTE) "
        "for this token; retry in "
    )
    assert (body["rule"], body["limit"]) == ("rate_limit", 4)
    assert 55 <= int(r.headers["retry-after"]) == body["retry_after"] <= 60
    # Another token, and anonymous callers, have their own allowance.
    assert limited.http.get(f"{API}/search", headers=limited.auth(limited.admin)).status_code == 200
    assert limited.http.get(f"{API}/search").status_code == 200
    assert limited.http.get("/health").status_code == 200


def test_the_daily_download_volume_counts_the_bytes_sent(limited: Api) -> None:
    size = REGIONS.stat().st_size
    admin = limited.auth(limited.admin)
    assert (
        limited.http.post(f"{API}/organizations", json={"name": ORG}, headers=admin).status_code
        == 201
    )
    assert (
        limited.http.post(
            f"{API}/datasets", json={"org": ORG, "name": "r"}, headers=admin
        ).status_code
        == 201
    )
    url = f"{API}/datasets/{ORG}/r/files/regions.csv"
    assert limited.http.put(url, content=REGIONS.read_bytes(), headers=admin).status_code == 200
    assert limited.http.get(url).content == REGIONS.read_bytes()
    assert limited.hub.quotas.downloaded_today("address:testclient") == size
    # A HEAD sends nothing; a range counts its length.
    assert limited.http.head(url).status_code == 200
    r = limited.http.get(url, headers={"Range": "bytes=0-99"})
    assert (r.status_code, len(r.content)) == (206, 100)
    r = limited.http.get(url, headers={"Range": "bytes=0-0"})
    body = error(r, 429, "over_quota")
    assert body["message"].startswith(
        f"daily download volume: at most {size + 100} bytes a day (KHAZNA_DAILY_DOWNLOAD_BYTES) "
        f"for anonymous callers from testclient; {size + 100} used today, this download is 1; "
        "retry after midnight UTC, in "
    )
    assert (body["rule"], body["used"]) == ("daily_download_bytes", size + 100)
    assert 0 < int(r.headers["retry-after"]) <= 86400


def test_quota_windows_and_unsent_bytes() -> None:
    now = [1_000_000.0]
    quotas = Quotas(per_minute=2, daily_bytes=1000, clock=lambda: now[0])
    quotas.hit("token:1")
    now[0] += 30
    quotas.hit("token:1")
    with pytest.raises(Exception) as refused:
        quotas.hit("token:1")
    assert refused.value.details["retry_after"] == 30  # type: ignore[attr-defined]
    now[0] += 30
    quotas.hit("token:1")  # a new minute
    # A download cut short counts what was sent; the rest is given back.
    reservation = quotas.download("token:1", 800)
    with pytest.raises(Exception, match="this download is 300"):
        quotas.download("token:1", 300)
    reservation.add(250)
    reservation.finish()
    assert quotas.downloaded_today("token:1") == 250
    quotas.download("token:1", 750).finish()
    assert quotas.downloaded_today("token:1") == 250
    # The day turns: the volume starts again.
    now[0] += 86400
    assert quotas.downloaded_today("token:1") == 0
    assert Quotas(0, 0).download("x", 10**12).reserved == 10**12


def test_only_the_first_quota_refusal_of_a_window_is_logged_with_the_ones_left_out(
    api: Api,
) -> None:
    now = [1_800_000_000.0]
    api.hub.quotas.per_minute = 2
    api.hub.quotas.clock = lambda: now[0]
    startup = api.auth(api.outsider)
    codes = [api.http.get(f"{API}/search", headers=startup).status_code for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    now[0] += 60  # the next minute: two more, then a refusal that reports the two unlogged
    codes = [api.http.get(f"{API}/search", headers=startup).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    # Another caller's refusals are counted on their own.
    now[0] += 1
    for _ in range(3):
        api.http.get(f"{API}/organizations/{ORG}")
    log = api.http.get(
        f"{API}/audit", params={"action": "denied"}, headers=api.auth(api.admin)
    ).json()
    message = (
        "rate limit: at most 2 requests per minute (KHAZNA_RATE_LIMIT_PER_MINUTE) for {who}; "
        "retry in {retry} s"
    )
    assert [(e["actor"], e["org"], e["detail"]) for e in reversed(log["entries"])] == [
        (
            "startup",
            None,
            {
                "status": 429,
                "rule": message.format(who="this token", retry=60),
                "quota": "rate_limit",
                "unlogged_before": 0,
                "method": "GET",
                "path": f"{API}/search",
            },
        ),
        (
            "startup",
            None,
            {
                "status": 429,
                "rule": message.format(who="this token", retry=60),
                "quota": "rate_limit",
                "unlogged_before": 2,
                "method": "GET",
                "path": f"{API}/search",
            },
        ),
        (
            None,
            ORG,
            {
                "status": 429,
                "rule": message.format(who="anonymous callers from testclient", retry=60),
                "quota": "rate_limit",
                "unlogged_before": 0,
                "method": "GET",
                "path": f"{API}/organizations/{ORG}",
            },
        ),
    ]
    assert api.hub.verify().ok


def test_a_download_over_the_daily_volume_is_logged_on_its_dataset(api: Api) -> None:
    publish(api, "ouvert", "public", wait=False)
    size = REGIONS.stat().st_size
    api.hub.quotas.daily_bytes = size + 10
    url = f"{API}/datasets/{ORG}/ouvert/files/regions.csv"
    startup = api.auth(api.outsider)
    assert api.http.get(url, headers=startup).status_code == 200
    assert [api.http.get(url, headers=startup).status_code for _ in range(3)] == [429] * 3
    r = api.http.get(url, headers={**startup, "Range": "bytes=0-9"})
    assert (r.status_code, r.content) == (206, REGIONS.read_bytes()[:10])
    log = api.http.get(
        f"{API}/audit",
        params={"dataset": f"{ORG}/ouvert", "action": "denied"},
        headers=api.auth(api.editor),
    ).json()
    assert log["count"] == 1
    entry = log["entries"][0]
    assert (entry["actor"], entry["dataset"]) == ("startup", "ouvert")
    assert entry["detail"]["rule"].startswith(
        f"daily download volume: at most {size + 10} bytes a day (KHAZNA_DAILY_DOWNLOAD_BYTES) "
        f"for this token; {size} used today, this download is {size}; retry after midnight UTC"
    )
    assert (entry["detail"]["quota"], entry["detail"]["unlogged_before"]) == (
        "daily_download_bytes",
        0,
    )


# the command line ---------------------------------------------------------------------


def test_tokens_and_access_from_the_command_line(live: LiveServer, tmp_path: Path) -> None:
    env = live.env()
    with live.client() as http:
        assert http.post(f"{API}/organizations", json={"name": ORG}).status_code == 201
        body = {"org": ORG, "name": "dossiers", "access": "restricted"}
        assert http.post(f"{API}/datasets", json=body).status_code == 201
        put = http.put(f"{API}/datasets/{ORG}/dossiers/files/regions.txt", content=b"secret\n")
        assert put.status_code == 200
    added = run("users", "add", "startup", env={**env, "KHAZNA_HOME": str(live.home)})
    startup = {**env, "KHAZNA_TOKEN": added.stdout.strip().splitlines()[-1]}

    made = run(
        "tokens", "create", "--label", "lecture", "--scope", "read", "--ttl", "600", env=startup
    )
    assert made.returncode == 0, made.stderr
    reader = made.stdout.strip().splitlines()[-1]
    assert reader.startswith("kz_") and "(read, all your datasets, expires 20" in made.stderr
    listed = run("tokens", "list", env=startup)
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(line[1], line[2], line[6], line[7]) for line in lines] == [
        ("scope", "state", "reach", "label"),
        ("read", "active", "all your datasets", "lecture"),
        ("read-write", "active", "all your datasets", "created with the user"),
    ]
    token_id = made.stderr.split("token ")[1].split(" ")[0]

    file_url = f"{live.url}{API}/datasets/{ORG}/dossiers/files/regions.txt"
    asked = run("access", "request", f"{ORG}/dossiers", "--purpose", "étude", env=startup)
    assert asked.returncode == 0, asked.stderr
    assert f"{ORG}/dossiers for startup: pending" in asked.stdout
    inbox = run("access", "list", "--state", "pending", env=env)
    assert f"{ORG}/dossiers for startup: pending  — étude" in inbox.stdout

    # The operator approves on the hub folder while the hub runs: in effect at once.
    approved = run(
        "access",
        "approve",
        f"{ORG}/dossiers",
        "startup",
        "--until",
        "2099-06-30",
        "--home",
        str(live.home),
        env=env,
    )
    assert approved.returncode == 0, approved.stderr
    assert (
        approved.stdout.strip()
        == f"{ORG}/dossiers for startup: approved until 2099-07-01T00:00:00Z"
    )
    assert httpx.get(file_url, headers={"Authorization": f"Bearer {reader}"}).content == b"secret\n"
    # A publisher refuses through the API.
    refused = run(
        "access", "refuse", f"{ORG}/dossiers", "startup", "--reason", "fin du projet", env=env
    )
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.strip() == f"{ORG}/dossiers for startup: refused (fin du projet)"
    assert httpx.get(file_url, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    mine = run("access", "list", "--mine", env=startup)
    assert f"{ORG}/dossiers for startup: refused (fin du projet)" in mine.stdout

    revoked = run("tokens", "revoke", token_id, env=startup)
    assert revoked.stdout.strip() == f"token {token_id} revoked"
    gone = run("search", env={**env, "KHAZNA_TOKEN": reader})
    assert gone.returncode == 1 and "this API token was revoked at" in gone.stderr
    unknown = run("access", "approve", f"{ORG}/nulle", "startup", "--home", str(live.home), env=env)
    assert (unknown.returncode, unknown.stderr.strip()) == (1, f"error: no dataset {ORG}/nulle")
