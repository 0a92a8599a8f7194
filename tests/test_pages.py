"""The web pages a newcomer sees first (the full UI grows in its own issue)."""

from __future__ import annotations

import pytest
from markupsafe import escape

from khazna.demo import load_demo, manifest
from tests.conftest import Api


@pytest.fixture
def demo(api: Api) -> Api:
    load_demo(api.hub)
    return api


def test_the_home_page_lists_the_demo_datasets_in_each_language(demo: Api) -> None:
    datasets = manifest()["datasets"]
    for lang, direction in (("fr", "ltr"), ("ar", "rtl"), ("en", "ltr")):
        page = demo.http.get("/", params={"lang": lang})
        assert page.status_code == 200
        assert f'<html lang="{lang}" dir="{direction}">' in page.text
        for d in datasets:
            assert escape(d["title"][lang]) in page.text
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


def test_the_search_page_shows_results_and_facets(demo: Api) -> None:
    page = demo.http.get("/search", params={"q": "gtfs", "lang": "fr"})
    assert page.status_code == 200
    assert "3 résultats" in page.text
    assert "gtfs-caltrain-2017" in page.text
    assert 'href="/search?q=gtfs&amp;format=ZIP&amp;lang=fr">ZIP</a> (3)' in page.text


def test_the_organization_page_lists_its_datasets(demo: Api) -> None:
    page = demo.http.get("/organizations/demo")
    assert page.status_code == 200
    assert page.text.count('<div class="card">') == len(manifest()["datasets"])


def test_pages_for_unknown_things_are_404(demo: Api) -> None:
    assert demo.http.get("/datasets/demo/nothing").status_code == 404
    assert demo.http.get("/organizations/nobody").status_code == 404


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
