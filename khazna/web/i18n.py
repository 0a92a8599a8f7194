"""The pages' languages: gettext catalogs, and which language a request gets.

The catalogs are the ``messages.po`` files under ``locale/{fr,ar,en}/LC_MESSAGES``, the
only translation files in the repository and the package. They are compiled in memory
the first time a language is asked for, so a clean clone, an editable install and a wheel
all work without a build step and a ``.mo`` can never be older than its ``.po``.
"""

from __future__ import annotations

import functools
import gettext
import io
from collections.abc import Mapping
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("fr", "ar", "en")
DEFAULT = "fr"
RIGHT_TO_LEFT = frozenset({"ar"})
# Each language's own name, shown in the switch as written in that language.
NAMES = {"fr": "Français", "ar": "العربية", "en": "English"}
COOKIE = "khazna_lang"


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"


@functools.cache
def translations(lang: str) -> gettext.GNUTranslations:
    """The compiled catalog of ``lang`` (one of LANGUAGES)."""
    with catalog_path(lang).open("rb") as po:
        catalog = read_po(po, locale=lang)
    mo = io.BytesIO()
    write_mo(mo, catalog)
    mo.seek(0)
    return gettext.GNUTranslations(mo)


def direction(lang: str) -> str:
    return "rtl" if lang in RIGHT_TO_LEFT else "ltr"


def choose(query: Mapping[str, str], cookies: Mapping[str, str], accept: str) -> str:
    """``?lang=``, else the remembered cookie, else ``Accept-Language``, else French."""
    for asked in (query.get("lang"), cookies.get(COOKIE)):
        if asked in LANGUAGES:
            return asked
    return from_accept_language(accept) or DEFAULT


def from_accept_language(header: str) -> str | None:
    """The supported language the browser prefers most (``ar-MA;q=0.9`` counts as ``ar``)."""
    best: tuple[float, int] | None = None
    chosen = None
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        # Highest weight wins; among equals, the one the browser listed first.
        if weight > 0 and (best is None or (weight, -position) > best):
            best, chosen = (weight, -position), primary
    return chosen


def country_name(code: str, lang: str) -> str:
    """A jurisdiction's name in ``lang`` (``MA`` -> Maroc, المغرب, Morocco), from CLDR."""
    return str(Locale.parse(lang).territories.get(code.upper(), code))
