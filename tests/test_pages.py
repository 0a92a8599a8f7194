"""The web pages, in-process: languages, the catalog pages, table preview and SQL, and
access levels holding on every page exactly as in the API."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from khazna import db
from khazna.app import create_app
from khazna.config import Settings
from khazna.demo import load_demo, manifest
from khazna.hub import Hub
from tests.conftest import Api
from tests.test_tables_api import ORG, PROVINCES, REGIONS, publish

REGIONS_FILE = "morocco_regions_rgph2024.csv"
PREVIEW = f"/datasets/demo/morocco-regions-rgph2024/tables/{REGIONS_FILE}"
PROFILE = f"/api/v1/tables/demo/morocco-regions-rgph2024/{REGIONS_FILE}/profile"
REGIONS_DEMO_SQL = "demo_morocco_regions_rgph2024_morocco_regions_rgph2024"


def wait_for_demo_tables(api: Api) -> None:
    """Until every demo table is ingested and the regions' profile computed."""
    deadline = time.monotonic() + 120
    names = [d["name"] for d in manifest()["datasets"]]
    while time.monotonic() < deadline:
        statuses = [
            f["table"]["status"]
            for name in names
            for f in api.http.get(f"/api/v1/datasets/demo/{name}").json()["files"]
            if "table" in f
        ]
        profile = api.http.get(PROFILE)
        if (
            "pending" not in statuses
            and profile.status_code == 200
            and profile.json()["status"] == "ready"
        ):
            return
        time.sleep(0.1)
    raise AssertionError("the demo tables were not ready within 120 s")


@pytest.fixture
def demo(api: Api) -> Api:
    load_demo(api.hub)
    wait_for_demo_tables(api)
    return api


def test_the_home_page_lists_the_demo_datasets_in_each_language(demo: Api) -> None:
    datasets = manifest()["datasets"]
    for lang, direction in (("fr", "ltr"), ("ar", "rtl"), ("en", "ltr")):
        page = demo.http.get("/", params={"lang": lang})
        assert page.status_code == 200
        assert f'<html lang="{lang}" dir="{direction}">' in page.text
        for d in datasets:
            assert escape(d["title"][lang]) in page.text
    demo.http.cookies.clear()  # ?lang= was remembered; a first visit is in French
    assert "Les données du pays, hébergées dans le pays." in demo.http.get("/").text


def test_cards_describe_datasets_in_the_page_language(demo: Api) -> None:
    regions = next(d for d in manifest()["datasets"] if d["name"] == "morocco-regions-rgph2024")
    arabic = demo.http.get("/", params={"lang": "ar"}).text
    assert str(escape(regions["description"]["ar"][:120])) in arabic
    assert str(escape(regions["description"]["fr"][:120])) not in arabic


def test_an_unknown_language_falls_back_to_french(demo: Api) -> None:
    page = demo.http.get("/", params={"lang": "xx"})
    assert '<html lang="fr" dir="ltr">' in page.text


def test_the_dataset_page_lists_files_and_links_each_version(demo: Api) -> None:
    page = demo.http.get("/datasets/demo/morocco-regions-rgph2024", params={"lang": "en"})
    assert page.status_code == 200
    title = "Population and households of Morocco's 12 regions (RGPH 2024 census)"
    assert escape(title) in page.text
    href = "/api/v1/datasets/demo/morocco-regions-rgph2024/files/morocco_regions_rgph2024.csv"
    assert f'href="{href}"' in page.text
    assert f'href="{href}?version=1"' in page.text
    assert "954 bytes" in page.text
    preview = "/datasets/demo/morocco-regions-rgph2024/tables/morocco_regions_rgph2024.csv?lang=en"
    assert f'<a href="{preview}">Preview</a>' in page.text


def test_the_search_page_shows_results_and_facets(demo: Api) -> None:
    page = demo.http.get("/search", params={"q": "gtfs", "lang": "fr"})
    assert page.status_code == 200
    assert "3 résultats" in page.text
    assert "gtfs-caltrain-2017" in page.text
    assert 'href="/search?q=gtfs&amp;format=ZIP&amp;lang=fr">ZIP</a> (3)' in page.text


def test_the_organization_page_lists_its_datasets(demo: Api) -> None:
    page = demo.http.get("/organizations/demo")
    assert page.status_code == 200
    assert page.text.count('<article class="card">') == len(manifest()["datasets"])


def test_pages_for_unknown_things_are_404(demo: Api) -> None:
    assert demo.http.get("/datasets/demo/nothing").status_code == 404
    assert demo.http.get("/organizations/nobody").status_code == 404


def _uses(page: str) -> list[tuple[str, str]]:
    """The home page's most used datasets: (link, counts line), in order."""
    section = page.split('<h2 id="most-used">')[1].split("</section>")[0]
    cards = section.split('<article class="card">')[1:]
    return [
        (
            card.split('<h3><a href="')[1].split("?")[0],
            card.split('<p class="uses">')[1].split("</p>")[0],
        )
        for card in cards
    ]


def test_the_home_page_shows_the_most_used_datasets_each_may_see(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()))
    publish(api, "dossiers", (PROVINCES.name, PROVINCES.read_bytes()), access="private")
    assert 'id="most-used"' not in api.http.get("/").text  # nothing used yet
    files = f"/api/v1/datasets/{ORG}"
    for _ in range(2):
        assert api.http.get(f"{files}/recensement/files/{REGIONS.name}").status_code == 200
    rows = f"/api/v1/tables/{ORG}/recensement/{REGIONS.name}/rows"
    assert api.http.get(rows).status_code == 200
    sql = "SELECT count(*) FROM ministere_sante_recensement_morocco_regions_rgph2024"
    assert api.http.post("/api/v1/sql", json={"sql": sql}).status_code == 200
    editor = api.auth(api.editor)
    for _ in range(5):
        download = f"{files}/dossiers/files/{PROVINCES.name}"
        assert api.http.get(download, headers=editor).status_code == 200
    # Forty days ago: out of the window.
    long_ago = db.utcnow() - dt.timedelta(days=40)
    monkeypatch.setattr(db, "utcnow", lambda: long_ago)
    for _ in range(5):
        assert api.http.get(f"{files}/recensement/files/{REGIONS.name}").status_code == 200
    monkeypatch.undo()

    public = f"/datasets/{ORG}/recensement"
    # A stranger sees the public dataset only, its counts of the last 30 days.
    assert _uses(api.http.get("/", params={"lang": "en"}).text) == [
        (public, "2 downloads · 1 page of rows · 1 query")
    ]
    # The editor also sees the private one, used more (5 uses against 4).
    page = api.http.get("/", params={"lang": "fr"}, headers=editor).text
    assert _uses(page) == [
        (f"/datasets/{ORG}/dossiers", "5 téléchargements · 0 page de lignes · 0 requête"),
        (public, "2 téléchargements · 1 page de lignes · 1 requête"),
    ]
    assert "Téléchargements, aperçus et requêtes des 30 derniers jours." in page
    assert api.hub.catalog.most_used(api.hub.accounts.authenticate(api.editor), limit=1)[0][
        "uses"
    ] == {"download": 5, "rows": 0, "query": 0, "total": 5}


# Rabat's old medina, roughly, and a point at the Hassan tower.
MEDINA = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"name": "المدينة القديمة"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[-6.842, 34.021], [-6.830, 34.021], [-6.830, 34.028], [-6.842, 34.028],
                     [-6.842, 34.021]]
                ],
            },
        },
        {
            "type": "Feature",
            "properties": {"name": "Tour Hassan"},
            "geometry": {"type": "Point", "coordinates": [-6.8225, 34.024]},
        },
    ],
}  # fmt: skip


def test_a_geojson_file_is_drawn_on_a_map_with_its_bounding_box_in_words(api: Api) -> None:
    geojson = json.dumps(MEDINA, ensure_ascii=False).encode()
    not_geo = json.dumps({"type": "Catalog", "id": "x"}).encode()
    publish(api, "medina", ("medina.geojson", geojson), ("meta.json", not_geo))
    page = api.http.get(f"/datasets/{ORG}/medina", params={"lang": "fr"})
    assert page.status_code == 200
    section = page.text.split('<h2 id="map">Carte</h2>')[1].split("</section>")[0]
    assert section.count('<figure class="map-layer">') == 1  # meta.json is no FeatureCollection
    assert (
        '<figcaption><span dir="ltr">medina.geojson</span> · emprise : ouest -6.842, '
        "sud 34.021, est -6.8225, nord 34.028</figcaption>"
    ) in section
    data = section.split('<script type="application/json" id="map-1-data">')[1].split("</script>")[
        0
    ]
    assert json.loads(data) == MEDINA
    assert '<script src="/static/vendor/leaflet/leaflet.js" defer></script>' in section
    assert "data-tiles" not in section  # no tile server unless the operator sets one
    # Drawing it is reading the file: logged as a download, shown on the map.
    entries = api.http.get(
        "/api/v1/audit", params={"action": "download"}, headers=api.auth(api.admin)
    ).json()["entries"]
    assert entries[0]["detail"]["shown"] == "map"
    assert entries[0]["detail"]["file"] == "medina.geojson"
    # The hub serves its own Leaflet and the page's script.
    for path in ("/static/vendor/leaflet/leaflet.js", "/static/vendor/leaflet/leaflet.css",
                 "/static/map.js"):  # fmt: skip
        assert api.http.get(path).status_code == 200
    plain = api.http.get("/", params={"lang": "fr"})
    assert "leaflet" not in plain.text


def test_the_operator_may_point_the_map_at_their_own_tile_server(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiles = "https://tiles.example.ma/{z}/{x}/{y}.png"
    monkeypatch.setenv("KHAZNA_MAP_TILES_URL", tiles)
    assert Settings.from_env().map_tiles_url == tiles
    monkeypatch.setattr(
        api.hub, "settings", dataclasses.replace(api.hub.settings, map_tiles_url=tiles)
    )
    publish(api, "medina", ("medina.geojson", json.dumps(MEDINA).encode()))
    page = api.http.get(f"/datasets/{ORG}/medina", params={"lang": "en"})
    assert f'data-tiles="{tiles}"' in page.text


def test_a_private_geojson_is_not_drawn_for_strangers(api: Api) -> None:
    publish(api, "zones", ("zones.geojson", json.dumps(MEDINA).encode()), access="registered")
    anonymous = api.http.get(f"/datasets/{ORG}/zones", params={"lang": "en"})
    assert anonymous.status_code == 200
    assert 'id="map"' not in anonymous.text
    signed_in = api.http.get(
        f"/datasets/{ORG}/zones", params={"lang": "en"}, headers=api.auth(api.outsider)
    )
    assert "bounding box: west -6.842, south 34.021, east -6.8225, north 34.028" in signed_in.text


def test_a_private_dataset_page_is_hidden_from_strangers(api: Api) -> None:
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": "ministere-sante", "name": "dossiers", "access": "private"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201
    assert api.http.get("/datasets/ministere-sante/dossiers").status_code == 404
    own = api.http.get("/datasets/ministere-sante/dossiers", headers=api.auth(api.editor))
    assert own.status_code == 200


# languages ---------------------------------------------------------------------------


def test_the_chosen_language_is_remembered_in_a_cookie(demo: Api) -> None:
    first = demo.http.get("/", params={"lang": "ar"})
    assert first.cookies["khazna_lang"] == "ar"
    later = demo.http.get("/search", params={"q": "gtfs"})
    assert '<html lang="ar" dir="rtl">' in later.text
    assert "3 نتائج" in later.text


def test_accept_language_chooses_when_neither_query_nor_cookie_does(demo: Api) -> None:
    for header, lang in (
        ("en-GB,en;q=0.9,fr;q=0.5", "en"),
        ("ar-MA", "ar"),
        ("de-DE, fr;q=0.3, en;q=0.8", "en"),
        ("de, es", "fr"),
        ("", "fr"),
    ):
        page = demo.http.get("/", headers={"Accept-Language": header})
        assert f'<html lang="{lang}"' in page.text, header
        assert "khazna_lang" not in page.cookies  # only an explicit choice is remembered
    # An explicit choice beats the browser's.
    page = demo.http.get("/", params={"lang": "fr"}, headers={"Accept-Language": "ar"})
    assert '<html lang="fr" dir="ltr">' in page.text


def test_the_language_switch_keeps_the_page_and_its_query_string(demo: Api) -> None:
    page = demo.http.get("/search", params={"q": "gtfs", "format": "ZIP", "lang": "fr"})
    assert 'href="/search?q=gtfs&amp;format=ZIP&amp;lang=ar" hreflang="ar"' in page.text
    assert 'href="/search?q=gtfs&amp;format=ZIP&amp;lang=en" hreflang="en"' in page.text
    table = demo.http.get(PREVIEW, params={"sort": "-population_2024", "lang": "en"})
    assert f'href="{PREVIEW}?sort=-population_2024&amp;lang=fr" hreflang="fr"' in table.text


def test_arabic_counts_use_arabic_plural_forms(demo: Api) -> None:
    def count_line(q: str) -> str:
        text = demo.http.get("/search", params={"q": q, "lang": "ar"}).text
        return text.split('<p role="status">')[1].split("</p>")[0]

    assert count_line("zzzz-nothing") == "لا توجد نتائج"
    assert count_line("caltrain") == "نتيجة واحدة"
    assert count_line("gtfs") == "3 نتائج"


def test_a_page_error_is_an_html_page_in_the_language_and_the_api_stays_json(
    demo: Api,
) -> None:
    page = demo.http.get("/datasets/demo/nothing", params={"lang": "ar"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert '<html lang="ar" dir="rtl">' in page.text
    assert "<h1>لا شيء هنا</h1>" in page.text
    bad = demo.http.get(PREVIEW, params={"offset": "abc", "lang": "en"})
    assert bad.status_code == 400
    assert "<h1>This request could not be understood</h1>" in bad.text
    api = demo.http.get("/api/v1/datasets/demo/nothing")
    assert api.json()["error"]["code"] == "not_found"


# table preview -----------------------------------------------------------------------


def _cells(html: str) -> list[list[str]]:
    """The body rows of the first data table of a page, as text."""
    body = html.split('<table class="data">')[1].split("<tbody>")[1].split("</tbody>")[0]
    rows = [r for r in body.split("<tr>")[1:]]
    return [[c.split(">", 1)[1].split("</td>")[0] for c in row.split("<td")[1:]] for row in rows]


def test_the_preview_shows_a_page_of_rows_with_the_column_types(demo: Api) -> None:
    page = demo.http.get(PREVIEW, params={"lang": "en", "limit": 5})
    assert page.status_code == 200
    assert "12 rows · SQL name:" in page.text
    assert '<p role="status">Rows 1 to 5 of 12</p>' in page.text
    assert "<span>Page 1 of 3</span>" in page.text
    cells = _cells(page.text)
    assert len(cells) == 5
    # Text in the data is shown as written, Arabic included.
    assert cells[0] == [
        "01",
        "01",
        "Tanger-Tétouan-Al Hoceima",
        "طنجة-تطوان-الحسيمة",
        "4030222",
        "1048860",
        "8",
        "146",
    ]
    assert 'population_2024<span class="visually-hidden">' in page.text
    assert '<span class="type" dir="ltr">BIGINT</span>' in page.text
    next_page = f'href="{PREVIEW}?lang=en&amp;limit=5&amp;offset=5">Next page</a>'
    assert next_page in page.text
    last = demo.http.get(PREVIEW, params={"lang": "en", "limit": 5, "offset": 10})
    assert '<p role="status">Rows 11 to 12 of 12</p>' in last.text
    assert "Next page" not in last.text
    assert [c[2] for c in _cells(last.text)] == ["Laâyoune-Sakia El Hamra", "Dakhla-Oued Ed-Dahab"]


def test_the_preview_sorts_by_a_column_header_link(demo: Api) -> None:
    page = demo.http.get(PREVIEW, params={"lang": "en", "limit": 3})
    ascending = f"{PREVIEW}?lang=en&amp;limit=3&amp;sort=population_2024"
    assert f'<a href="{ascending}" dir="auto">population_2024<' in page.text
    up = demo.http.get(PREVIEW, params={"lang": "en", "limit": 3, "sort": "population_2024"})
    assert [c[2] for c in _cells(up.text)] == [
        "Dakhla-Oued Ed-Dahab",
        "Guelmim-Oued Noun",
        "Laâyoune-Sakia El Hamra",
    ]
    assert '<th scope="col" aria-sort="ascending">' in up.text
    # The sorted column's link now sorts the other way.
    descending = f"{PREVIEW}?lang=en&amp;limit=3&amp;sort=-population_2024"
    assert f'<a href="{descending}" dir="auto">population_2024 ▲<' in up.text
    down = demo.http.get(PREVIEW, params={"lang": "en", "limit": 3, "sort": "-population_2024"})
    assert [c[4] for c in _cells(down.text)] == ["7688967", "5132639", "4892393"]


def test_the_filter_form_becomes_a_rows_api_filter(demo: Api) -> None:
    form = {"lang": "en", "_column": "population_2024", "_op": "gt", "_value": "4500000"}
    sent = demo.http.get(PREVIEW, params=form, follow_redirects=False)
    assert sent.status_code == 303
    assert sent.headers["location"] == f"{PREVIEW}?lang=en&population_2024__gt=4500000"
    page = demo.http.get(sent.headers["location"])
    assert [c[2] for c in _cells(page.text)] == [
        "Rabat-Salé-Kénitra",
        "Casablanca-Settat",
        "Marrakech-Safi",
    ]
    assert '<p role="status">Rows 1 to 3 of 3</p>' in page.text
    assert f'<a href="{PREVIEW}?lang=en">remove' in page.text
    equal = {"lang": "en", "_column": "name_ar", "_op": "eq", "_value": "الشرق"}
    page = demo.http.get(PREVIEW, params=equal)
    assert [c[2] for c in _cells(page.text)] == ["Oriental"]
    unknown = demo.http.get(PREVIEW, params={"lang": "en", "nope__gt": "1"})
    assert unknown.status_code == 400
    assert "nope" in unknown.text


def test_the_preview_shows_the_profile_of_each_column(demo: Api) -> None:
    page = demo.http.get(PREVIEW, params={"lang": "fr"})
    profile = page.text.split('<h2 id="columns">Colonnes</h2>')[1]
    row = profile.split('<th scope="row" dir="auto">population_2024</th>')[1].split("</tr>")[0]
    assert row.startswith(
        '<td><code dir="ltr">BIGINT</code></td><td>0</td><td>12</td>'
        '<td dir="auto">219965</td><td dir="auto">7688967</td><td><ul class="top">'
    )
    # Every population appears once: the five smallest come first, each 1/12 of the rows.
    top = row.split('<ul class="top">')[1].split("</ul>")[0]
    assert top.count('<span class="bar" style="inline-size: 8.3%"></span>') == 5
    assert [v.split("</span>")[0] for v in top.split('<span dir="auto">')[1:]] == [
        "219965",
        "448685",
        "451028",
        "1655623",
        "2294665",
    ]
    provinces = profile.split('<th scope="row" dir="auto">provinces</th>')[1].split("</tr>")[0]
    assert '<span dir="auto">8</span> <span class="count">(3)</span>' in provinces
    assert '<th scope="col">Valeurs vides</th>' in profile


def test_the_preview_draws_each_histogram_bin_with_its_words(demo: Api) -> None:
    with REGIONS.open(encoding="utf-8", newline="") as f:
        provinces = [int(r["provinces"]) for r in csv.DictReader(f)]
    # 2 to 9 provinces a region: eight bins of one value, counted here from the CSV.
    counts = {n: provinces.count(n) for n in range(2, 10)}
    assert counts == {2: 1, 3: 0, 4: 2, 5: 2, 6: 1, 7: 1, 8: 3, 9: 2}
    api = demo.http.get(PROFILE).json()["columns"]["provinces"]["histogram"]
    assert api == [{"from": n, "to": n, "count": c} for n, c in counts.items()]
    page = demo.http.get(PREVIEW, params={"lang": "en"})
    assert '<th scope="col">Distribution</th>' in page.text
    row = page.text.split('<th scope="row" dir="auto">provinces</th>')[1].split("</tr>")[0]
    bars = row.split('<ul class="histogram">')[1].split("</ul>")[0].split("<li>")[1:]
    # Each bar as tall as its count against the fullest bin (3), and said in words.
    assert bars[0] == (
        '<span class="bar" aria-hidden="true" style="block-size: 33.3%"></span>'
        '<span class="visually-hidden">1 row from 2 to 2</span></li>'
    )
    assert '<span class="visually-hidden">0 rows from 3 to 3</span>' in bars[1]
    assert (
        'style="block-size: 100.0%"></span><span class="visually-hidden">3 rows from 8 to 8'
        in bars[6]
    )
    assert len(bars) == 8
    assert '<span class="range" dir="ltr">2 – 9</span>' in row
    arabic = demo.http.get(PREVIEW, params={"lang": "ar"}).text
    assert '<span class="visually-hidden">صفان من 9 إلى 9</span>' in arabic
    french = demo.http.get(PREVIEW, params={"lang": "fr"}).text
    assert '<span class="visually-hidden">3 lignes de 8 à 8</span>' in french
    # Text columns have none.
    name = page.text.split('<th scope="row" dir="auto">name_fr</th>')[1].split("</tr>")[0]
    assert "histogram" not in name


# SQL page ----------------------------------------------------------------------------

REGIONS_QUERY = (
    f"SELECT code, name_ar, population_2024 FROM {REGIONS_DEMO_SQL} "
    "ORDER BY population_2024 DESC LIMIT 2"
)


def test_the_sql_page_runs_the_query_and_shows_its_rows(demo: Api) -> None:
    form = demo.http.get("/sql", params={"sql": "SELECT 1", "lang": "en"})
    assert '<label for="sql">Query</label>' in form.text
    assert ">SELECT 1</textarea>" in form.text
    page = demo.http.post("/sql?lang=en", data={"sql": REGIONS_QUERY})
    assert page.status_code == 200
    assert _cells(page.text) == [
        ["06", "الدار البيضاء-سطات", "7688967"],
        ["04", "الرباط-سلا-القنيطرة", "5132639"],
    ]
    assert '<p role="status">2 rows · ' in page.text
    assert (
        '<input type="hidden" name="format" value="csv"><button type="submit">Download as CSV'
        in page.text
    )


def test_the_sql_downloads_hold_the_same_query_as_csv_and_parquet(demo: Api) -> None:
    got = demo.http.post("/sql/download", data={"sql": REGIONS_QUERY, "format": "csv"})
    assert got.status_code == 200
    assert got.headers["content-disposition"] == 'attachment; filename="khazna-query.csv"'
    assert got.text == (
        '"code","name_ar","population_2024"\n'
        '"06","الدار البيضاء-سطات",7688967\n'
        '"04","الرباط-سلا-القنيطرة",5132639\n'
    )
    got = demo.http.post("/sql/download", data={"sql": REGIONS_QUERY, "format": "parquet"})
    assert got.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(got.content))
    assert table.to_pydict() == {
        "code": ["06", "04"],
        "name_ar": ["الدار البيضاء-سطات", "الرباط-سلا-القنيطرة"],
        "population_2024": [7688967, 5132639],
    }
    refused = demo.http.post("/sql/download", data={"sql": REGIONS_QUERY, "format": "xlsx"})
    assert refused.status_code == 400


def test_a_failing_query_is_shown_on_the_page_with_the_form(demo: Api) -> None:
    page = demo.http.post("/sql?lang=fr", data={"sql": "DROP TABLE x"})
    assert page.status_code == 400
    assert "<h2>La requête a échoué</h2>" in page.text
    assert ">DROP TABLE x</textarea>" in page.text


def test_a_read_only_token_may_use_the_sql_page(demo: Api) -> None:
    made = demo.http.post(
        "/api/v1/tokens", json={"scope": "read"}, headers=demo.auth(demo.outsider)
    )
    assert made.status_code == 201, made.text
    headers = demo.auth(made.json()["token"])
    page = demo.http.post("/sql", data={"sql": REGIONS_QUERY}, headers=headers)
    assert page.status_code == 200
    got = demo.http.post(
        "/sql/download", data={"sql": REGIONS_QUERY, "format": "csv"}, headers=headers
    )
    assert got.status_code == 200


# access levels on the pages, as in the API -------------------------------------------

RESTRICTED_SQL = "ministere_sante_recensement_morocco_regions_rgph2024"
RESTRICTED_PREVIEW = f"/datasets/{ORG}/recensement/tables/{REGIONS.name}"


@pytest.fixture
def restricted(api: Api) -> Api:
    publish(api, "recensement", (REGIONS.name, REGIONS.read_bytes()), access="restricted")
    publish(api, "dossiers", (PROVINCES.name, PROVINCES.read_bytes()), access="private")
    return api


def test_a_restricted_table_is_refused_on_the_pages_as_in_the_api(restricted: Api) -> None:
    api = restricted
    rows = f"/api/v1/tables/{ORG}/recensement/{REGIONS.name}/rows"
    # Anonymous: 401, as the rows API says; signed in without approval: 403.
    for headers, status in ((None, 401), (api.auth(api.outsider), 403)):
        page = api.http.get(RESTRICTED_PREVIEW, params={"lang": "en"}, headers=headers)
        assert (page.status_code, api.http.get(rows, headers=headers).status_code) == (
            status,
            status,
        )
        assert "is restricted: its data needs an approved access request" in page.text
        assert "Morocco" not in page.text and "Tanger" not in page.text
    # The organization's editor reads it.
    own = api.http.get(RESTRICTED_PREVIEW, headers=api.auth(api.editor))
    assert own.status_code == 200
    assert "Tanger-Tétouan-Al Hoceima" in own.text


def test_a_restricted_table_does_not_exist_for_the_sql_page_of_a_stranger(
    restricted: Api,
) -> None:
    api = restricted
    query = f"SELECT name_fr FROM {RESTRICTED_SQL} ORDER BY 1 LIMIT 1"
    for headers in (None, api.auth(api.outsider)):
        through_api = api.http.post("/api/v1/sql", json={"sql": query}, headers=headers)
        page = api.http.post("/sql?lang=en", data={"sql": query}, headers=headers)
        download = api.http.post(
            "/sql/download", data={"sql": query, "format": "csv"}, headers=headers
        )
        assert (through_api.status_code, page.status_code, download.status_code) == (
            400,
            400,
            400,
        )
        message = f"Table with name {RESTRICTED_SQL} does not exist!"
        assert message in through_api.json()["error"]["message"]
        assert message in page.text and message in download.text
        assert "Al Hoceima" not in page.text + download.text
    own = api.http.post(
        "/sql/download", data={"sql": query, "format": "csv"}, headers=api.auth(api.editor)
    )
    assert own.text == '"name_fr"\n"Béni Mellal-Khénifra"\n'


def test_a_private_table_page_does_not_exist_for_strangers(restricted: Api) -> None:
    api = restricted
    path = f"/datasets/{ORG}/dossiers/tables/{PROVINCES.name}"
    for headers in (None, api.auth(api.outsider)):
        assert api.http.get(path, headers=headers).status_code == 404
        assert api.http.get(f"/datasets/{ORG}/dossiers", headers=headers).status_code == 404
    assert api.http.get(path, headers=api.auth(api.editor)).status_code == 200


def test_the_dataset_page_offers_no_preview_to_who_may_not_read(restricted: Api) -> None:
    page = restricted.http.get(f"/datasets/{ORG}/recensement", params={"lang": "en"})
    assert page.status_code == 200
    assert RESTRICTED_PREVIEW not in page.text
    assert "needs an access the current caller does not have" in page.text
    own = restricted.http.get(
        f"/datasets/{ORG}/recensement",
        params={"lang": "en"},
        headers=restricted.auth(restricted.editor),
    )
    assert f'<a href="{RESTRICTED_PREVIEW}?lang=en">Preview</a>' in own.text


def test_what_the_pages_read_is_in_the_audit_log_as_through_the_api(restricted: Api) -> None:
    api = restricted
    auth = api.auth(api.editor)
    assert api.http.get(RESTRICTED_PREVIEW, params={"sort": "code"}, headers=auth).is_success
    query = f"SELECT count(*) FROM {RESTRICTED_SQL}"
    assert api.http.post("/sql", data={"sql": query}, headers=auth).is_success
    assert api.http.post("/sql/download", data={"sql": query}, headers=auth).is_success
    entries = api.http.get(
        "/api/v1/audit", params={"limit": 3}, headers=api.auth(api.admin)
    ).json()["entries"]
    file = {"file": REGIONS.name, "sql_name": RESTRICTED_SQL}
    assert [(e["action"], e["actor"], e["dataset"], e["detail"]) for e in reversed(entries)] == [
        ("rows", "nadia", "recensement", {**file, "query": "sort=code"}),
        (
            "query",
            "nadia",
            "recensement",
            {"sql": query, "tables": [RESTRICTED_SQL], "format": "json"},
        ),
        (
            "query",
            "nadia",
            "recensement",
            {"sql": query, "tables": [RESTRICTED_SQL], "format": "csv"},
        ),
    ]


def test_the_dataset_page_says_where_its_data_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KHAZNA_STORAGE_JURISDICTION", "MA")
    hub = Hub(Settings.from_env(tmp_path / "ma"))
    system = hub.accounts.system_principal()
    hub.catalog.create_organization(system, "hcp", "HCP")
    hub.catalog.create_dataset(system, "hcp", "rgph", residency="MA")
    hub.catalog.create_dataset(system, "hcp", "libre")
    with TestClient(create_app(hub)) as http:
        fr = http.get("/datasets/hcp/rgph", params={"lang": "fr"}).text
        ar = http.get("/datasets/hcp/rgph", params={"lang": "ar"}).text
        free = http.get("/datasets/hcp/libre", params={"lang": "en"}).text
    storage = hub.settings.storage
    hub.close()
    # The suite runs on local disk and on SeaweedFS: the page names whichever holds the bytes.
    if storage.kind == "s3":
        place_fr = f'Sur le stockage objet du hub (<code dir="ltr">{storage.describe()}</code>)'
        place_en = f'On the hub\'s object storage (<code dir="ltr">{storage.describe()}</code>)'
    else:
        place_fr, place_en = "Sur les disques du hub", "On the hub's own disks"
    where = (
        f"{place_fr}, juridiction : Maroc.\n"
        "Ses fichiers ne peuvent être stockés que sous cette juridiction : Maroc."
    )
    assert where in fr
    assert "الولاية القضائية: المغرب" in ar
    assert f"{place_en}, jurisdiction: Morocco.\n</p>" in free


# signing in --------------------------------------------------------------------------


def test_signing_in_keeps_the_token_in_a_strict_cookie_for_the_pages_only(
    restricted: Api,
) -> None:
    api = restricted
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 401
    form = api.http.get("/signin", params={"next": RESTRICTED_PREVIEW, "lang": "en"})
    assert '<label for="token">API token</label>' in form.text
    assert f'<input type="hidden" name="next" value="{RESTRICTED_PREVIEW}">' in form.text
    signed = api.http.post(
        "/signin",
        data={"token": api.editor, "next": RESTRICTED_PREVIEW},
        follow_redirects=False,
    )
    assert (signed.status_code, signed.headers["location"]) == (303, RESTRICTED_PREVIEW)
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith(f"khazna_token={api.editor};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = api.http.get(RESTRICTED_PREVIEW, params={"lang": "en"})
    assert page.status_code == 200
    assert '<span class="who">nadia</span> <button type="submit">Sign out</button>' in page.text
    # The API answers to the Authorization header alone.
    rows = f"/api/v1/tables/{ORG}/recensement/{REGIONS.name}/rows"
    assert api.http.get(rows).status_code == 401
    out = api.http.post("/signout", follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/")
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 401


def test_a_refused_token_is_said_on_the_sign_in_page(api: Api) -> None:
    page = api.http.post("/signin?lang=fr", data={"token": "kz_nope", "next": "/"})
    assert page.status_code == 401
    assert "<h2>Ce jeton a été refusé</h2>" in page.text
    assert "invalid or revoked API token" in page.text
    assert "khazna_token" not in page.headers.get("set-cookie", "")


def test_sign_in_never_sends_the_visitor_to_another_site(api: Api) -> None:
    for target, expected in (
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/signin?next=/sql", "/"),
        ("/search?q=gtfs", "/search?q=gtfs"),
    ):
        r = api.http.post(
            "/signin", data={"token": api.outsider, "next": target}, follow_redirects=False
        )
        assert r.headers["location"] == expected, target


def test_a_revoked_token_in_the_cookie_makes_the_visitor_anonymous_again(restricted: Api) -> None:
    api = restricted
    made = api.http.post("/api/v1/tokens", json={}, headers=api.auth(api.editor)).json()
    api.http.post("/signin", data={"token": made["token"]})
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 200
    revoked = api.http.delete(f"/api/v1/tokens/{made['id']}", headers=api.auth(api.editor))
    assert revoked.status_code == 204
    home = api.http.get("/", params={"lang": "en"})
    assert home.status_code == 200
    assert "Your sign-in has ended: its token was revoked or has expired." in home.text
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 401


def test_another_sites_form_does_not_act_as_the_signed_in_visitor(restricted: Api) -> None:
    api = restricted
    api.http.post("/signin", data={"token": api.editor})
    query = {"sql": f"SELECT count(*) FROM {RESTRICTED_SQL}"}
    same = api.http.post("/sql", data=query, headers={"Origin": "http://testserver"})
    assert same.status_code == 200
    other = api.http.post("/sql", data=query, headers={"Origin": "https://evil.example"})
    assert other.status_code == 400
    assert "does not exist" in other.text


# publishing --------------------------------------------------------------------------


def test_publishing_asks_an_anonymous_visitor_to_sign_in(api: Api) -> None:
    page = api.http.get("/publish", params={"lang": "en"})
    assert page.status_code == 401
    assert "Publishing needs an editor of an organization." in page.text
    assert 'href="/signin?next=%2Fpublish&amp;lang=en">Sign in</a>' in page.text
    sent = api.http.post("/publish", data={"org": ORG, "name": "x"})
    assert sent.status_code == 401
    assert api.http.get(f"/api/v1/datasets/{ORG}/x").status_code == 404


def test_an_editor_creates_a_dataset_from_the_publish_page(api: Api) -> None:
    other = {"name": "ailleurs", "title": "Ailleurs"}
    assert api.http.post(
        "/api/v1/organizations", json=other, headers=api.auth(api.admin)
    ).is_success
    api.http.post("/signin", data={"token": api.editor})
    form = api.http.get("/publish", params={"lang": "fr"})
    # Only the organizations the editor may publish in.
    assert '<option value="ministere-sante">Ministère de la Santé</option>' in form.text
    assert 'value="ailleurs"' not in form.text
    sent = api.http.post(
        "/publish?lang=ar",
        data={
            "org": ORG,
            "name": "vaccins",
            "title_fr": "Couverture vaccinale",
            "title_ar": "التغطية باللقاحات",
            "title_en": "",
            "description_fr": "Par province.",
            "tags": "sante, vaccins",
            "license": "CC-BY-4.0",
            "access": "registered",
        },
        follow_redirects=False,
    )
    assert (sent.status_code, sent.headers["location"]) == (
        303,
        f"/datasets/{ORG}/vaccins/upload?lang=ar",
    )
    made = api.http.get(f"/api/v1/datasets/{ORG}/vaccins", headers=api.auth(api.editor)).json()
    assert {k: made[k] for k in ("title", "description", "tags", "license", "access")} == {
        "title": {"fr": "Couverture vaccinale", "ar": "التغطية باللقاحات"},
        "description": {"fr": "Par province."},
        "tags": ["sante", "vaccins"],
        "license": "CC-BY-4.0",
        "access": "registered",
    }
    again = api.http.post("/publish?lang=en", data={"org": ORG, "name": "vaccins"})
    assert again.status_code == 409
    assert "<h2>The dataset was not created</h2>" in again.text
    assert f"dataset {ORG}/vaccins already exists" in again.text


def test_a_visitor_who_edits_nothing_cannot_publish(api: Api) -> None:
    api.http.post("/signin", data={"token": api.outsider})
    form = api.http.get("/publish", params={"lang": "en"})
    assert "You are an editor of no organization yet" in form.text
    sent = api.http.post("/publish", data={"org": ORG, "name": "intrus"})
    assert sent.status_code == 403
    assert api.http.get(f"/api/v1/datasets/{ORG}/intrus").status_code == 404


def test_the_upload_page_sends_the_file_as_a_new_version(api: Api) -> None:
    api.http.post(
        "/api/v1/datasets", json={"org": ORG, "name": "chiffres"}, headers=api.auth(api.editor)
    )
    target = f"/datasets/{ORG}/chiffres/upload/{REGIONS.name}"
    # Anonymous, or another site's script: refused, in JSON for the page's script.
    for headers in (None, {"Origin": "https://evil.example"}):
        if headers:
            api.http.post("/signin", data={"token": api.editor})
        r = api.http.put(target, content=REGIONS.read_bytes(), headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    assert api.http.get(f"/datasets/{ORG}/chiffres/upload").status_code == 200
    sent = api.http.put(target, content=REGIONS.read_bytes())
    assert sent.status_code == 200
    assert {k: sent.json()[k] for k in ("name", "size", "version")} == {
        "name": REGIONS.name,
        "size": 954,
        "version": 1,
    }
    page = api.http.get(f"/datasets/{ORG}/chiffres", params={"lang": "en"})
    assert f'<a href="/datasets/{ORG}/chiffres/upload?lang=en">Add a file</a>' in page.text
    entry = api.http.get("/api/v1/audit", params={"limit": 1}, headers=api.auth(api.admin)).json()[
        "entries"
    ][0]
    assert (entry["action"], entry["actor"], entry["version"]) == ("upload", "nadia", 1)
    api.http.post("/signin", data={"token": api.outsider})
    assert api.http.get(f"/datasets/{ORG}/chiffres/upload").status_code == 403
    assert "Add a file" not in api.http.get(f"/datasets/{ORG}/chiffres").text


# the audit log -----------------------------------------------------------------------


def test_the_audit_page_shows_what_the_audit_api_gives_the_same_caller(restricted: Api) -> None:
    api = restricted
    api.http.get(RESTRICTED_PREVIEW, params={"sort": "-code"}, headers=api.auth(api.editor))
    mine = {"dataset": f"{ORG}/recensement", "lang": "en"}
    for headers, status in ((None, 401), (api.auth(api.outsider), 403)):
        page = api.http.get("/audit", params=mine, headers=headers)
        through_api = api.http.get("/api/v1/audit", params=mine, headers=headers)
        assert (page.status_code, through_api.status_code) == (status, status)
    page = api.http.get("/audit", params=mine, headers=api.auth(api.editor))
    expected = api.http.get(
        "/api/v1/audit", params={**mine, "limit": 50}, headers=api.auth(api.editor)
    ).json()
    assert page.status_code == 200
    assert f'<p role="status">{expected["count"]} entries</p>' in page.text
    assert page.text.count("<tr><td>") == len(expected["entries"]) == expected["count"]
    newest = expected["entries"][0]
    assert newest["action"] == "rows"
    row = page.text.split(f"<tr><td>{newest['seq']}</td>")[1].split("</tr>")[0]
    assert '<td dir="auto">nadia</td><td><code dir="ltr">rows</code></td>' in row
    assert (
        '<code dir="ltr">{&#34;file&#34;: &#34;morocco_regions_rgph2024.csv&#34;, '
        "&#34;query&#34;: &#34;sort=-code&#34;, "
        f"&#34;sql_name&#34;: &#34;{RESTRICTED_SQL}&#34;}}</code>"
    ) in row
    dataset = api.http.get(f"/datasets/{ORG}/recensement", headers=api.auth(api.editor))
    # (in English: the language chosen above is remembered)
    assert f'href="/audit?dataset={ORG}%2Frecensement&amp;lang=en">Audit log</a>' in dataset.text


# access requests ---------------------------------------------------------------------


def test_a_reader_asks_for_access_and_the_publisher_approves_it_on_the_pages(
    restricted: Api,
) -> None:
    api = restricted
    page = api.http.get(f"/datasets/{ORG}/recensement", params={"lang": "en"})
    assert "Sign in to ask for access</a>" in page.text
    assert api.http.get("/requests").status_code == 401
    api.http.post("/signin", data={"token": api.outsider})
    page = api.http.get(f"/datasets/{ORG}/recensement")
    assert '<label for="purpose">Ask for access: what will you do with this data?</label>' in (
        page.text
    )
    asked = api.http.post(
        f"/datasets/{ORG}/recensement/access-request",
        data={"purpose": "thèse sur les ménages"},
        follow_redirects=False,
    )
    assert (asked.status_code, asked.headers["location"]) == (303, "/requests?lang=en")
    mine = api.http.get("/requests")
    assert '<td dir="auto">thèse sur les ménages</td>\n<td>pending</td>' in mine.text
    again = api.http.post(f"/datasets/{ORG}/recensement/access-request", data={"purpose": "x"})
    assert again.status_code == 409
    # Deciding is the publisher's: the reader is refused as by the API.
    approve = f"/datasets/{ORG}/recensement/access-requests/startup/approve"
    assert api.http.post(approve, data={"until": ""}).status_code == 403

    api.http.post("/signin", data={"token": api.editor})
    inbox = api.http.get("/requests", params={"lang": "fr"})
    assert '<h2 id="inbox">Pour les jeux de données que vous publiez</h2>' in inbox.text
    assert '<td dir="auto">startup</td>' in inbox.text
    done = api.http.post(approve, data={"until": "2999-12-31"}, follow_redirects=False)
    assert (done.status_code, done.headers["location"]) == (303, "/requests?lang=fr")
    through_api = api.http.get(
        f"/api/v1/datasets/{ORG}/recensement/access-requests", headers=api.auth(api.editor)
    ).json()["requests"]
    assert [(r["user"], r["state"], r["expires_at"]) for r in through_api] == [
        ("startup", "approved", "3000-01-01T00:00:00Z")
    ]
    # The reader now reads the table.
    api.http.post("/signin", data={"token": api.outsider})
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 200

    api.http.post("/signin", data={"token": api.editor})
    refuse = f"/datasets/{ORG}/recensement/access-requests/startup/refuse"
    assert api.http.post(refuse, data={"reason": "données nominatives"}).status_code == 200
    api.http.post("/signin", data={"token": api.outsider})
    assert api.http.get(RESTRICTED_PREVIEW).status_code == 403
    mine = api.http.get("/requests", params={"lang": "en"})
    assert '<td>refused: <span dir="auto">données nominatives</span></td>' in mine.text
    actions = [
        e["action"]
        for e in api.http.get(
            "/api/v1/audit", params={"action": "access.request"}, headers=api.auth(api.admin)
        ).json()["entries"]
    ]
    assert actions == ["access.request"]
