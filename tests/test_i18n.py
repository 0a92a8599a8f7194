"""Every sentence of the pages goes through gettext, and each catalog translates them all.

The catalogs are khazna/web/locale/{fr,ar,en}/LC_MESSAGES/messages.po; `make messages`
extracts the strings with the rules of khazna/web/babel.cfg, which these tests read too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from khazna.web import i18n

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "khazna" / "web"
TEMPLATES = sorted((WEB / "templates").glob("*.html"))

# Names and symbols that read the same in every language.
UNTRANSLATED = {"Khazna", "خزنة", "SHA-256", "CSV", "Parquet"}
UNREAD_ELEMENTS = {"style", "script", "code", "pre"}
# Attributes whose values people read (or hear, with a screen reader).
READ_ATTRIBUTES = {"placeholder", "title", "alt", "aria-label", "value"}


def _extracted() -> set[str | tuple[str, str]]:
    """The msgids in the templates and Python files of khazna/web, as `make messages` finds
    them."""
    with (WEB / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: set[str | tuple[str, str]] = set()
    for _, _, message, _, _ in extract_from_dir(REPO, method_map, options_map):
        found.add(message if isinstance(message, str) else (message[0], message[1]))
    return found


def _catalog(lang: str) -> Catalog:
    with i18n.catalog_path(lang).open("rb") as po:
        return read_po(po, locale=lang)


def _ids(catalog: Catalog) -> set[str | tuple[str, str]]:
    return {m.id if isinstance(m.id, str) else (m.id[0], m.id[1]) for m in catalog if m.id}


def test_the_extraction_finds_the_pages_strings() -> None:
    found = _extracted()
    assert "The country's data, hosted in the country." in found
    assert ("%(num)s result", "%(num)s results") in found
    assert len(found) > 90


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_each_catalog_translates_every_string_and_nothing_else(lang: str) -> None:
    catalog = _catalog(lang)
    found = _extracted()
    assert sorted(map(str, found - _ids(catalog))) == []  # none missing
    assert sorted(map(str, _ids(catalog) - found)) == []  # none left over
    assert catalog.obsolete == {}
    for message in catalog:
        if not message.id:
            continue
        assert not message.fuzzy, message.id
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(s.strip() for s in strings), message.id
        assert len(strings) == (catalog.num_plurals if message.pluralizable else 1), message.id
    # Placeholders (%(name)s) the same as in the msgid, in every form.
    assert [(m.id, errors) for m, errors in catalog.check()] == []


def test_each_catalog_has_its_languages_plural_rule() -> None:
    assert _catalog("fr").num_plurals == 3
    assert _catalog("ar").num_plurals == 6
    assert _catalog("en").num_plurals == 2
    arabic = i18n.translations("ar")
    forms = [arabic.ngettext("%(num)s row", "%(num)s rows", n) for n in (0, 1, 2, 3, 11, 100)]
    assert forms == [
        "لا توجد صفوف",
        "صف واحد",
        "صفان",
        "%(num)s صفوف",
        "%(num)s صفًا",
        "%(num)s صف",
    ]


def test_english_is_the_source_and_its_catalog_says_so() -> None:
    for message in _catalog("en"):
        if message.id:
            assert message.string == message.id


class _VisibleText(HTMLParser):
    """Text a template shows as written: text nodes and read attributes. Code (``<code>``,
    ``<pre>``: commands, SQL names) is not prose and is left out."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in UNREAD_ELEMENTS:
            self._skip += 1
        for name, value in attrs:
            # A hidden input's value is data sent back, not read.
            hidden = ("type", "hidden") in attrs
            if name in READ_ATTRIBUTES and value and not hidden:
                self.found.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in UNREAD_ELEMENTS:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.found.append(data)


_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_TRANS_BLOCK = re.compile(r"\{%-?\s*trans\b.*?\{%-?\s*endtrans\s*-?%\}", re.DOTALL)


def hard_coded_text(source: str) -> list[str]:
    """Words in a template that no gettext call produces."""
    bare = _JINJA.sub(" ", _TRANS_BLOCK.sub(" ", source))
    parser = _VisibleText()
    parser.feed(bare)
    words = [w for text in parser.found for w in text.split()]
    return [w for w in words if re.search(r"[^\W\d_]", w) and w not in UNTRANSLATED]


def test_the_check_finds_hard_coded_text() -> None:
    assert hard_coded_text('<p title="Open it">{{ _("Files") }} Versions</p>') == [
        "Open",
        "it",
        "Versions",
    ]
    assert hard_coded_text('<input type="hidden" name="lang" value="{{ lang }}">') == []
    assert hard_coded_text("<pre><code>khazna pull demo/x</code></pre>") == []
    assert hard_coded_text("{% trans %}Some {{ n }} words{% endtrans %}") == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_no_template_shows_text_outside_gettext(template: Path) -> None:
    assert hard_coded_text(template.read_text(encoding="utf-8")) == []
