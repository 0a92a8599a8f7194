"""Server-rendered pages: home, search, organization, dataset. ``?lang=fr|ar|en``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from khazna.api.deps import HubDep, Who, check_caller
from khazna.catalog.names import pick_language
from khazna.storage.blobstore import human_bytes

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_caller)])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
LANGUAGES = ("fr", "ar", "en")

LABELS: dict[str, dict[str, str]] = {
    "fr": {
        "search": "Rechercher",
        "datasets": "Jeux de données",
        "files": "Fichiers",
        "versions": "Versions",
        "licence": "Licence",
        "access": "Accès",
        "organizations": "Organisations",
        "results": "résultats",
        "version": "version",
        "size": "Taille",
        "format": "Format",
        "download": "Télécharger",
        "tagline": "Les données du pays, hébergées dans le pays.",
        "rows": "lignes",
        "preparing": "table en préparation",
        "not_a_table": "pas une table",
    },
    "ar": {
        "search": "بحث",
        "datasets": "مجموعات البيانات",
        "files": "الملفات",
        "versions": "الإصدارات",
        "licence": "الترخيص",
        "access": "الوصول",
        "organizations": "المؤسسات",
        "results": "نتائج",
        "version": "الإصدار",
        "size": "الحجم",
        "format": "الصيغة",
        "download": "تنزيل",
        "tagline": "بيانات البلد، مستضافة في البلد.",
        "rows": "صفوف",
        "preparing": "الجدول قيد الإعداد",
        "not_a_table": "ليس جدولا",
    },
    "en": {
        "search": "Search",
        "datasets": "Datasets",
        "files": "Files",
        "versions": "Versions",
        "licence": "Licence",
        "access": "Access",
        "organizations": "Organizations",
        "results": "results",
        "version": "version",
        "size": "Size",
        "format": "Format",
        "download": "Download",
        "tagline": "The country's data, hosted in the country.",
        "rows": "rows",
        "preparing": "table being prepared",
        "not_a_table": "not a table",
    },
}


def _lang(request: Request) -> str:
    lang = request.query_params.get("lang", "fr")
    return lang if lang in LANGUAGES else "fr"


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    lang = _lang(request)
    return templates.TemplateResponse(
        request,
        template,
        {
            "lang": lang,
            "dir": "rtl" if lang == "ar" else "ltr",
            "t": LABELS[lang],
            "pick": lambda text: pick_language(text, lang),
            "human_bytes": human_bytes,
            **context,
        },
    )


@router.get("/", response_class=HTMLResponse)
def home(request: Request, who: Who, hub: HubDep) -> HTMLResponse:
    latest = hub.search.search(who, "", limit=12)
    return _render(
        request, "home.html", latest=latest["results"], organizations=hub.catalog.organizations()
    )


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    who: Who,
    hub: HubDep,
    q: str = "",
    org: str | None = None,
    tag: str | None = None,
    format: str | None = None,
    license: str | None = None,
) -> HTMLResponse:
    found = hub.search.search(who, q, org=org, tag=tag, format=format, license=license, limit=50)
    return _render(request, "search.html", q=q, found=found)


@router.get("/organizations/{org}", response_class=HTMLResponse)
def organization_page(request: Request, org: str, who: Who, hub: HubDep) -> HTMLResponse:
    return _render(
        request,
        "organization.html",
        org=hub.catalog.organization(org),
        datasets=hub.catalog.datasets_of(who, org),
    )


@router.get("/datasets/{org}/{name}", response_class=HTMLResponse)
def dataset_page(request: Request, org: str, name: str, who: Who, hub: HubDep) -> HTMLResponse:
    dataset = hub.tables.annotate(hub.catalog.dataset(who, org, name))
    readable = hub.catalog.can_read(who, org, name)
    history = hub.catalog.versions(who, org, name) if readable else []
    return _render(request, "dataset.html", d=dataset, versions=history, readable=readable)
