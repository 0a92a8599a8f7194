"""Finding data: full-text search over the catalog, its facets, paging and access rules.

The stories run over the real demo catalog (khazna/demo/manifest.json) plus datasets a
ministry's editor publishes through the API.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest

from khazna.access import ANONYMOUS
from khazna.catalog.text import fold
from khazna.config import Settings
from khazna.demo import load_demo, manifest
from khazna.hub import Hub
from tests.conftest import ON_POSTGRES, Api

SEARCH = "/api/v1/search"
ORG = "ministere-sante"

# The demo datasets, newest update first (load_demo versions them in manifest order).
DEMO_NEWEST_FIRST = [
    "ct-phantom-ge-discovery-mi",
    "sentinel2-29rkh-2020-02-19",
    "gtfs-egged-route-2126-2018",
    "gtfs-caltrain-2017",
    "gtfs-cairns-2014",
    "morocco-provinces-rgph2024",
    "morocco-regions-rgph2024",
]
DEMO_FACETS = {
    "org": {"demo": 7},
    "tag": {
        "gtfs": 3,
        "maroc": 3,
        "transport": 3,
        "transport-public": 3,
        "bus": 2,
        "demographie": 2,
        "hcp": 2,
        "menages": 2,
        "population": 2,
        "recensement": 2,
        "rgph-2024": 2,
        "australie": 1,
        "cog": 1,
        "controle-qualite": 1,
        "copernicus": 1,
        "ct": 1,
        "dicom": 1,
        "etats-unis": 1,
        "fantome": 1,
        "hebreu": 1,
        "imagerie-medicale": 1,
        "israel": 1,
        "ndvi": 1,
        "prefectures": 1,
        "provinces": 1,
        "regions": 1,
        "rtl": 1,
        "satellite": 1,
        "sentinel-2": 1,
        "stac": 1,
        "teledetection": 1,
        "train": 1,
    },
    "format": {"ZIP": 3, "CSV": 2, "DICOM": 1, "GeoTIFF": 1, "STAC": 1},
    "license": {"MIT": 4, "CC-BY-4.0": 2, "copernicus-sentinel": 1},
}
CENSUS_FACETS = {
    "org": {"demo": 2},
    "tag": {
        "demographie": 2,
        "hcp": 2,
        "maroc": 2,
        "menages": 2,
        "population": 2,
        "recensement": 2,
        "rgph-2024": 2,
        "prefectures": 1,
        "provinces": 1,
        "regions": 1,
    },
    "format": {"CSV": 2},
    "license": {"CC-BY-4.0": 2},
}
GTFS_FACETS = {
    "org": {"demo": 3},
    "tag": {
        "gtfs": 3,
        "transport": 3,
        "transport-public": 3,
        "bus": 2,
        "australie": 1,
        "etats-unis": 1,
        "hebreu": 1,
        "israel": 1,
        "rtl": 1,
        "train": 1,
    },
    "format": {"ZIP": 3},
    "license": {"MIT": 3},
}
EMPTY = {"count": 0, "results": [], "facets": {"org": {}, "tag": {}, "format": {}, "license": {}}}
CSV_BYTES = b"commune,prelevements,conformes\nRabat,120,118\nSale,95,91\n"


# helpers -----------------------------------------------------------------------------


@pytest.fixture
def demo(api: Api) -> Api:
    """The API over a hub holding the demo catalog."""
    load_demo(api.hub)
    return api


def search(api: Api, token: str | None = None, **params: Any) -> dict[str, Any]:
    headers = api.auth(token) if token else {}
    r = api.http.get(SEARCH, params=params, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"count", "results", "facets"}
    return body


def names(body: dict[str, Any]) -> list[str]:
    return [r["name"] for r in body["results"]]


def create(api: Api, name: str, token: str | None = None, **fields: Any) -> dict[str, Any]:
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": ORG, "name": name, **fields},
        headers=api.auth(token or api.editor),
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def upload(api: Api, name: str, file: str, data: bytes) -> None:
    r = api.http.put(
        f"/api/v1/datasets/{ORG}/{name}/files/{file}", content=data, headers=api.auth(api.editor)
    )
    assert r.status_code == 200, r.text


def demo_containing(word: str) -> set[str]:
    """Demo datasets whose title or description, in any language, contains ``word``."""
    return {
        ds["name"]
        for ds in manifest()["datasets"]
        if any(
            word.casefold() in text.casefold()
            for text in [*ds["title"].values(), *ds["description"].values()]
        )
    }


# 1. searching the demo catalog in French, Arabic and English --------------------------


def test_a_citizen_typing_without_accents_finds_the_french_datasets(demo: Api) -> None:
    found = search(demo, q="donnees")

    expected = [
        "gtfs-cairns-2014",
        "morocco-regions-rgph2024",
        "morocco-provinces-rgph2024",
        "sentinel2-29rkh-2020-02-19",
    ]
    assert names(found) == expected
    assert found["count"] == 4
    assert set(expected) == demo_containing("données")
    # The snippet shows the text as written, accents and capital included.
    regions = found["results"][1]
    assert regions["snippet"].startswith("<mark>Données</mark> du Recensement général")


@pytest.mark.parametrize(
    "typed",
    ["DONNÉES", "données", "Donnees", unicodedata.normalize("NFD", "données")],
    ids=["upper-accented", "accented", "capitalized", "decomposed-nfd"],
)
def test_any_spelling_of_donnees_finds_the_same_datasets(demo: Api, typed: str) -> None:
    assert search(demo, q=typed) == search(demo, q="donnees")


def test_arabic_is_searched_as_written(demo: Api) -> None:
    found = search(demo, q="السكان")

    assert names(found) == ["morocco-regions-rgph2024", "morocco-provinces-rgph2024"]
    assert found["count"] == 2
    assert set(names(found)) == demo_containing("السكان")
    assert found["facets"] == CENSUS_FACETS
    # Each snippet is the Arabic description's passage, as written, every mention marked.
    mentions = {"morocco-regions-rgph2024": 2, "morocco-provinces-rgph2024": 1}
    for result in found["results"]:
        assert result["snippet"].count("<mark>السكان</mark>") == mentions[result["name"]]
        plain = result["snippet"].replace("<mark>", "").replace("</mark>", "").strip("…")
        assert plain in result["description"]["ar"]


@pytest.mark.parametrize("typed", ["السُّكَّان", "الســكان"], ids=["with-harakat", "with-tatweel"])
def test_arabic_vowel_marks_and_tatweel_are_optional(demo: Api, typed: str) -> None:
    assert search(demo, q=typed) == search(demo, q="السكان")


def test_a_description_written_with_harakat_is_found_without_them(api: Api) -> None:
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": ORG, "name": "cartes-sanitaires", "title": {"ar": "الخَرِيطَة الصِّحِّيَّة"}},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201
    assert names(search(api, q="الخريطة الصحية")) == ["cartes-sanitaires"]


def test_english_words_find_the_english_descriptions(demo: Api) -> None:
    assert names(search(demo, q="census households")) == [
        "morocco-regions-rgph2024",
        "morocco-provinces-rgph2024",
    ]
    assert names(search(demo, q="phantom")) == ["ct-phantom-ge-discovery-mi"]
    assert names(search(demo, q="right to left")) == ["gtfs-egged-route-2126-2018"]


def test_a_result_carries_the_dataset_metadata(demo: Api) -> None:
    found = search(demo, q="caltrain")

    assert found["count"] == 1
    spec = next(d for d in manifest()["datasets"] if d["name"] == "gtfs-caltrain-2017")
    result = found["results"][0]
    assert {k: result[k] for k in ("org", "name", "title", "description", "tags", "access")} == {
        "org": "demo",
        "name": "gtfs-caltrain-2017",
        "title": spec["title"],
        "description": spec["description"],
        "tags": sorted(spec["tags"]),
        "access": "public",
    }
    # The snippet shows the description passage that matched (the title is shown anyway),
    # cut from the text as written, the match marked.
    assert result["snippet"].startswith("Flux GTFS réel de <mark>Caltrain</mark>, le train")
    assert result["snippet"].endswith("…")


@pytest.mark.parametrize(
    ("typed", "dataset", "marked"),
    [
        ("B04", "sentinel2-29rkh-2020-02-19", ": <mark>B04</mark> (rouge)"),
        (
            "cairns_gtfs.zip",
            "gtfs-cairns-2014",
            "<mark>cairns</mark>_<mark>gtfs</mark>.<mark>zip</mark>",
        ),
        (
            "ct_1.dcm",
            "ct-phantom-ge-discovery-mi",
            "<mark>ct</mark>_<mark>1</mark>.<mark>dcm</mark>",
        ),
    ],
)
def test_file_names_are_searchable(demo: Api, typed: str, dataset: str, marked: str) -> None:
    found = search(demo, q=typed)

    assert names(found) == [dataset]
    assert marked in found["results"][0]["snippet"]


@pytest.mark.parametrize(
    ("tag", "dataset"),
    [
        ("rtl", "gtfs-egged-route-2126-2018"),
        ("teledetection", "sentinel2-29rkh-2020-02-19"),
        ("imagerie-medicale", "ct-phantom-ge-discovery-mi"),
    ],
)
def test_tags_are_searchable(demo: Api, tag: str, dataset: str) -> None:
    found = search(demo, q=tag)

    assert names(found) == [dataset]
    assert found["facets"]["tag"][tag] == 1


def test_a_word_in_no_dataset_finds_nothing(demo: Api) -> None:
    assert search(demo, q="zanzibar") == EMPTY
    assert search(demo, q="donnees zanzibar") == EMPTY


# 2. facets and filters -------------------------------------------------------------------


def test_facets_count_the_matching_datasets(demo: Api) -> None:
    assert search(demo)["facets"] == DEMO_FACETS
    gtfs = search(demo, q="gtfs")
    assert names(gtfs) == ["gtfs-cairns-2014", "gtfs-egged-route-2126-2018", "gtfs-caltrain-2017"]
    assert gtfs["facets"] == GTFS_FACETS
    assert search(demo, q="B04")["facets"] == {
        "org": {"demo": 1},
        "tag": {
            "cog": 1,
            "copernicus": 1,
            "maroc": 1,
            "ndvi": 1,
            "satellite": 1,
            "sentinel-2": 1,
            "stac": 1,
            "teledetection": 1,
        },
        "format": {"GeoTIFF": 1, "STAC": 1},
        "license": {"copernicus-sentinel": 1},
    }


def test_filtering_by_tag_narrows_count_and_facets(demo: Api) -> None:
    found = search(demo, q="gtfs", tag="bus")

    assert names(found) == ["gtfs-cairns-2014", "gtfs-egged-route-2126-2018"]
    assert found["count"] == 2
    assert found["facets"] == {
        "org": {"demo": 2},
        "tag": {
            "bus": 2,
            "gtfs": 2,
            "transport": 2,
            "transport-public": 2,
            "australie": 1,
            "hebreu": 1,
            "israel": 1,
            "rtl": 1,
        },
        "format": {"ZIP": 2},
        "license": {"MIT": 2},
    }


@pytest.mark.parametrize("label", ["GeoTIFF", "geotiff", "GEOTIFF"])
def test_the_format_filter_ignores_case(demo: Api, label: str) -> None:
    found = search(demo, format=label)

    assert names(found) == ["sentinel2-29rkh-2020-02-19"]
    assert found["facets"]["format"] == {"GeoTIFF": 1, "STAC": 1}


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("ZIP", ["gtfs-egged-route-2126-2018", "gtfs-caltrain-2017", "gtfs-cairns-2014"]),
        ("csv", ["morocco-provinces-rgph2024", "morocco-regions-rgph2024"]),
        ("DICOM", ["ct-phantom-ge-discovery-mi"]),
        ("stac", ["sentinel2-29rkh-2020-02-19"]),
        ("parquet", []),
    ],
)
def test_filtering_by_format(demo: Api, label: str, expected: list[str]) -> None:
    found = search(demo, format=label)

    assert names(found) == expected
    assert found["count"] == len(expected)


def test_filtering_by_license_and_org(demo: Api) -> None:
    census = search(demo, license="CC-BY-4.0")
    assert names(census) == ["morocco-provinces-rgph2024", "morocco-regions-rgph2024"]
    assert census["facets"] == CENSUS_FACETS

    mit = search(demo, license="MIT")
    assert names(mit) == [
        "ct-phantom-ge-discovery-mi",
        "gtfs-egged-route-2126-2018",
        "gtfs-caltrain-2017",
        "gtfs-cairns-2014",
    ]
    assert mit["facets"]["format"] == {"ZIP": 3, "DICOM": 1}
    assert mit["facets"]["license"] == {"MIT": 4}

    assert search(demo, org="demo")["facets"] == DEMO_FACETS
    assert search(demo, org=ORG) == EMPTY
    assert search(demo, org="nowhere") == EMPTY


def test_combined_filters_must_all_hold(demo: Api) -> None:
    found = search(demo, q="transport", tag="bus", format="zip", license="MIT", org="demo")
    assert names(found) == ["gtfs-egged-route-2126-2018", "gtfs-cairns-2014"]
    assert found["facets"]["org"] == {"demo": 2}
    assert found["facets"]["format"] == {"ZIP": 2}

    found = search(demo, q="maroc", format="csv", tag="provinces")
    assert names(found) == ["morocco-provinces-rgph2024"]
    assert found["facets"]["tag"]["provinces"] == 1

    # Each filter alone matches something; together nothing.
    assert search(demo, tag="bus", format="CSV") == EMPTY
    assert search(demo, q="population", license="MIT") == EMPTY


# 3. paging -------------------------------------------------------------------------------


def test_an_empty_query_lists_every_dataset_newest_first(demo: Api) -> None:
    everything = search(demo)

    assert everything["count"] == 7
    assert names(everything) == DEMO_NEWEST_FIRST
    assert search(demo, q="   ") == everything


def test_pages_are_disjoint_and_cover_the_whole_list(demo: Api) -> None:
    full = names(search(demo, limit=100))
    pages = [search(demo, limit=3, offset=offset) for offset in (0, 3, 6, 9)]

    assert [names(p) for p in pages] == [full[0:3], full[3:6], full[6:7], []]
    assert [p["count"] for p in pages] == [7, 7, 7, 7]
    assert all(p["facets"] == DEMO_FACETS for p in pages)

    matched = names(search(demo, q="gtfs"))
    paged = [names(search(demo, q="gtfs", limit=1, offset=i)) for i in range(4)]
    assert paged == [[matched[0]], [matched[1]], [matched[2]], []]


def test_limit_zero_only_counts(demo: Api) -> None:
    assert search(demo, limit=0) == {"count": 7, "results": [], "facets": DEMO_FACETS}
    assert search(demo, q="gtfs", limit=0) == {"count": 3, "results": [], "facets": GTFS_FACETS}
    assert len(search(demo, limit=1000)["results"]) == 7
    assert search(demo, offset=2**63 - 1) == {"count": 7, "results": [], "facets": DEMO_FACETS}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 2**63}, "offset"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_out_of_range_paging_is_a_400(demo: Api, params: dict[str, Any], field: str) -> None:
    r = demo.http.get(SEARCH, params={"q": "gtfs", **params})

    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "bad_request"
    assert field in body["error"]["message"]


# 4. ranking ------------------------------------------------------------------------------


def test_a_title_match_ranks_above_a_passing_mention(api: Api) -> None:
    filler = (
        "Ce rapport décrit l'activité des établissements de santé publique de la région, "
        "les consultations, les hospitalisations et les ressources humaines. "
    )
    create(
        api,
        "rapport-annuel-2023",
        title="Rapport annuel d'activité 2023",
        description=filler * 30 + "Une annexe mentionne le paludisme importé.",
    )
    create(
        api,
        "cas-paludisme-2023",
        title="Cas de paludisme déclarés en 2023",
        description="Nombre de cas par province et par mois.",
    )

    found = search(api, q="paludisme")

    assert names(found) == ["cas-paludisme-2023", "rapport-annuel-2023"]
    assert found["results"][0]["snippet"] == "Cas de <mark>paludisme</mark> déclarés en 2023"
    deep = found["results"][1]["snippet"]
    assert deep.startswith("…")
    assert deep.endswith("le <mark>paludisme</mark> importé.")


# 5. snippets -------------------------------------------------------------------------------


def test_html_in_a_description_comes_back_escaped(api: Api) -> None:
    create(
        api,
        "campagne-vaccination",
        title="Campagne 2024",
        description="<script>alert(1)</script> données de vaccination par région",
    )

    found = search(api, q="vaccination")

    assert found["count"] == 1
    result = found["results"][0]
    assert result["snippet"] == (
        "&lt;script&gt;alert(1)&lt;/script&gt; données de <mark>vaccination</mark> par région"
    )
    # The description itself is data, returned as given; the snippet is HTML.
    assert result["description"] == {
        "fr": "<script>alert(1)</script> données de vaccination par région"
    }
    listed = next(r for r in search(api)["results"] if r["name"] == "campagne-vaccination")
    assert listed["snippet"] == (
        "&lt;script&gt;alert(1)&lt;/script&gt; données de vaccination par région"
    )


# 6. visibility -----------------------------------------------------------------------------


def test_a_private_dataset_is_found_only_by_its_organization(demo: Api) -> None:
    create(
        demo,
        "dossiers-admissions",
        title="Admissions hospitalières nominatives",
        tags=["confidentiel", "maroc"],
        license="interne",
        access="private",
    )
    upload(demo, "dossiers-admissions", "admissions.csv", CSV_BYTES)

    for token in (None, demo.outsider):
        assert search(demo, token, q="admissions") == EMPTY
        assert search(demo, token, tag="confidentiel") == EMPTY
        assert search(demo, token, org=ORG) == EMPTY
        everything = search(demo, token)
        assert names(everything) == DEMO_NEWEST_FIRST
        assert everything["facets"] == DEMO_FACETS

    for token in (demo.editor, demo.admin):
        found = search(demo, token, q="admissions")
        assert names(found) == ["dossiers-admissions"]
        assert found["results"][0]["access"] == "private"
        assert found["facets"] == {
            "org": {ORG: 1},
            "tag": {"confidentiel": 1, "maroc": 1},
            "format": {"CSV": 1},
            "license": {"interne": 1},
        }
        everything = search(demo, token)
        assert names(everything) == ["dossiers-admissions", *DEMO_NEWEST_FIRST]
        assert everything["facets"]["org"] == {"demo": 7, ORG: 1}
        assert everything["facets"]["tag"]["maroc"] == 4
        assert everything["facets"]["tag"]["confidentiel"] == 1
        assert everything["facets"]["format"] == {
            "CSV": 3,
            "ZIP": 3,
            "DICOM": 1,
            "GeoTIFF": 1,
            "STAC": 1,
        }
        assert everything["facets"]["license"] == {
            "MIT": 4,
            "CC-BY-4.0": 2,
            "copernicus-sentinel": 1,
            "interne": 1,
        }


def test_a_private_dataset_made_public_becomes_searchable(api: Api) -> None:
    create(api, "lits-hopitaux", title="Lits d'hôpitaux par province", access="private")
    assert search(api, q="lits") == EMPTY

    r = api.http.patch(
        f"/api/v1/datasets/{ORG}/lits-hopitaux",
        json={"access": "public"},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text

    assert names(search(api, q="lits")) == ["lits-hopitaux"]
    assert names(search(api, api.outsider, q="hopitaux")) == ["lits-hopitaux"]


# 7. reindexing ---------------------------------------------------------------------------


def test_renaming_a_dataset_reindexes_it(demo: Api) -> None:
    create(demo, "qualite-eau", title="Qualité de l'eau potable", tags=["eau"])
    assert names(search(demo, q="potable")) == ["qualite-eau"]
    assert names(search(demo, q="phreatiques")) == []

    r = demo.http.patch(
        f"/api/v1/datasets/{ORG}/qualite-eau",
        json={"title": "Analyses des nappes phréatiques"},
        headers=demo.auth(demo.editor),
    )
    assert r.status_code == 200, r.text

    assert search(demo, q="potable") == EMPTY
    assert names(search(demo, q="phreatiques")) == ["qualite-eau"]
    # The rename made it the most recently updated dataset.
    assert names(search(demo)) == ["qualite-eau", *DEMO_NEWEST_FIRST]


def test_reloading_the_unchanged_demo_keeps_the_newest_first_order(demo: Api) -> None:
    create(demo, "qualite-eau", title="Qualité de l'eau potable")
    before = search(demo)
    assert names(before) == ["qualite-eau", *DEMO_NEWEST_FIRST]

    # What `khazna serve --demo` does at every start.
    assert load_demo(demo.hub) == []

    assert search(demo) == before


def test_uploaded_files_become_searchable_with_their_format(api: Api) -> None:
    create(api, "qualite-eau", title="Qualité de l'eau potable")
    assert search(api, q="prelevements_2024") == EMPTY
    assert search(api, q="potable")["facets"]["format"] == {}

    upload(api, "qualite-eau", "prelevements_2024.csv", CSV_BYTES)

    found = search(api, q="prelevements_2024")
    assert names(found) == ["qualite-eau"]
    assert found["results"][0]["snippet"] == "<mark>prelevements</mark>_<mark>2024</mark>.csv"
    assert found["facets"]["format"] == {"CSV": 1}
    assert names(search(api, format="csv")) == ["qualite-eau"]

    upload(api, "qualite-eau", "stations.geojson", b'{"type": "FeatureCollection", "features": []}')
    assert search(api, q="potable")["facets"]["format"] == {"CSV": 1, "GeoJSON": 1}
    assert names(search(api, q="stations prelevements")) == ["qualite-eau"]

    r = api.http.delete(
        f"/api/v1/datasets/{ORG}/qualite-eau/files/prelevements_2024.csv",
        headers=api.auth(api.editor),
    )
    assert r.status_code == 200, r.text
    assert search(api, q="prelevements_2024") == EMPTY
    assert search(api, format="csv") == EMPTY
    assert search(api, q="potable")["facets"]["format"] == {"GeoJSON": 1}


# 8. hostile or odd input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    ['"', "*", "(", ")", "^", ":", "-", "'", "\\", '""', "_", "%", "ـ", "\u0301", "🙂", "؟"],
)
def test_punctuation_alone_matches_nothing(demo: Api, typed: str) -> None:
    assert search(demo, q=typed) == EMPTY


@pytest.mark.parametrize(
    ("typed", "as_words"),
    [
        ("AND", "and"),
        ("a OR", "a or"),
        ("NOT", "not"),
        ("NEAR(", "near"),
        ("NEAR(infrared dicom, 2)", "near infrared dicom 2"),
        ("title:caltrain", "title caltrain"),
        ("{title description}: gtfs", "title description gtfs"),
        ('"bus" AND NOT "train"', "bus and not train"),
        ("gtfs*", "gtfs"),
        ("population -maroc", "population maroc"),
    ],
)
def test_search_syntax_is_read_as_plain_words(demo: Api, typed: str, as_words: str) -> None:
    assert search(demo, q=typed) == search(demo, q=as_words)


@pytest.mark.parametrize(
    ("typed", "same_as"),
    [
        ("a\x00b", "a b"),  # a NUL separates words like a space
        ("\x00", "!"),  # no word at all: nothing found
        ("x" * 5000, "xyzzy"),  # a word found nowhere
        ("é" * 300, "xyzzy"),
        ("donnees " * 200, "donnees"),  # repeating a word changes nothing
    ],
)
def test_odd_input_never_breaks_search(demo: Api, typed: str, same_as: str) -> None:
    assert search(demo, q=typed) == search(demo, q=same_as)
    assert search(demo, q="xyzzy")["count"] == 0


@pytest.mark.parametrize(
    ("typed", "written"),
    [
        ("احصاء", "إحصاء"),  # alef with hamza below
        ("اقاليم", "أقاليم"),  # alef with hamza above
        ("الصحه", "الصحة"),  # teh marbuta typed as heh
        ("مستشفى", "مستشفي"),  # alef maqsura and yeh
        ("ﻻ", "لا"),  # a presentation-form ligature
    ],
)
def test_arabic_spelling_variants_find_each_other(api: Api, typed: str, written: str) -> None:
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": ORG, "name": "variantes", "title": {"ar": f"بيانات {written} الجهوية"}},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201
    found = search(api, q=typed)
    assert names(found) == ["variantes"]


def test_snippets_keep_the_text_as_it_was_written(api: Api) -> None:
    description = {"ar": "سجلّ الصِّحَّة العامة في جهة الدار البيضاء-سطات"}
    r = api.http.post(
        "/api/v1/datasets",
        json={"org": ORG, "name": "sante-publique", "description": description},
        headers=api.auth(api.editor),
    )
    assert r.status_code == 201
    found = search(api, q="الصحه")
    assert found["results"][0]["snippet"] == (
        "سجلّ <mark>الصِّحَّة</mark> العامة في جهة الدار البيضاء-سطات"
    )


# 9. the same answers from both databases -------------------------------------------------


@pytest.mark.skipif(
    not ON_POSTGRES, reason="compares with PostgreSQL: set KHAZNA_TEST_DATABASE_URL"
)
def test_postgresql_finds_and_ranks_exactly_as_sqlite(tmp_path: Path) -> None:
    hubs = [
        Hub(Settings.from_env(tmp_path / "pg")),  # the test's PostgreSQL database
        Hub(Settings(home=tmp_path / "lite", database_url=f"sqlite:///{tmp_path}/lite.db")),
    ]
    assert [h.engine.dialect.name for h in hubs] == ["postgresql", "sqlite"]
    words: set[str] = set()
    for ds in manifest()["datasets"]:
        for text_ in [*ds["title"].values(), *ds["description"].values(), *ds["tags"]]:
            words.update(w for w in fold(text_).replace("-", " ").split() if len(w) > 2)
    ranked = sorted(words)
    # Whole words, prefixes, pairs; words in Latin and Arabic script, digits.
    queries = [*ranked[::3], *(w[:3] for w in ranked[1::7]), "transport public", "rgph_2024"]
    queries += [f"{a} {b}" for a, b in zip(ranked[::11], ranked[5::11], strict=False)]
    for hub in hubs:
        load_demo(hub)
    answers = []
    for hub in hubs:
        found = {}
        for q in queries:
            body = hub.search.search(ANONYMOUS, q, limit=100)
            found[q] = (
                body["count"],
                [(r["name"], r["snippet"]) for r in body["results"]],
                body["facets"],
            )
        answers.append(found)
        hub.close()
    assert len(queries) > 100
    assert sum(1 for count, _, _ in answers[1].values() if count > 1) > 20  # ranking shows
    assert answers[0] == answers[1]
