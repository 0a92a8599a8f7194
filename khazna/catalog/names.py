"""Validation of the names that appear in URLs: organizations, datasets, files, tags."""

from __future__ import annotations

import re
import unicodedata

from khazna.errors import BadRequest, InvalidName

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,98}[a-z0-9])?$")
_LANG = re.compile(r"^[a-z]{2,3}$")
DEFAULT_LANGUAGE = "fr"
# Characters per language; enough for a long description, not for a smuggled file.
TEXT_LIMITS = {"title": 300, "description": 20_000}
MAX_FILE_NAME = 255


def check_slug(value: object, what: str) -> str:
    """A lowercase slug: letters a-z, digits, '-' and '_', starting and ending alphanumeric."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidName(
            f"invalid {what} name {value!r}: use 1 to 100 lowercase letters a-z, digits, "
            "'-' or '_', starting and ending with a letter or digit",
            field=what,
        )
    return value


def check_file_name(value: object) -> str:
    """A single path segment: no separators, no control characters, no leading dot."""
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_FILE_NAME:
        raise InvalidName(f"invalid file name {value!r}: 1 to 255 bytes", field="file")
    bad = (
        "/" in value
        or "\\" in value
        or value.startswith((".", " "))
        or value.endswith(" ")
        or any(unicodedata.category(c).startswith("C") for c in value)
    )
    if bad:
        raise InvalidName(
            f"invalid file name {value!r}: no '/', '\\', control characters, "
            "leading dot or surrounding spaces",
            field="file",
        )
    return value


def normalize_text(value: object, what: str, *, required: bool = False) -> dict[str, str]:
    """A text given as a string (French) or as ``{language: text}``."""
    if value is None or value == "" or value == {}:
        if required:
            raise BadRequest(f"{what} is required", field=what)
        return {}
    if isinstance(value, str):
        _check_text(value, what, TEXT_LIMITS.get(what, 20_000))
        return {DEFAULT_LANGUAGE: value.strip()}
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for lang, text in value.items():
            if not isinstance(lang, str) or not _LANG.fullmatch(lang):
                raise BadRequest(
                    f"{what}: language code {lang!r} must be 2 or 3 lowercase letters (fr, ar, en)",
                    field=what,
                )
            if not isinstance(text, str):
                raise BadRequest(f"{what}[{lang}] must be a string", field=what)
            _check_text(text, f"{what}[{lang}]", TEXT_LIMITS.get(what, 20_000))
            if text.strip():
                out[lang] = text.strip()
        if required and not out:
            raise BadRequest(f"{what} is required", field=what)
        return out
    raise BadRequest(f"{what} must be a string or an object of language: text", field=what)


def _check_text(text: str, what: str, limit: int) -> None:
    if len(text) > limit:
        raise BadRequest(f"{what} is {len(text)} characters long; the limit is {limit}", field=what)
    # Line breaks and tabs are text; other control characters (NUL...) are not.
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text):
        raise BadRequest(f"{what} contains control characters", field=what)


def pick_language(text: dict[str, str], lang: str = DEFAULT_LANGUAGE) -> str:
    """The text in ``lang``, else French, else any language given."""
    return text.get(lang) or text.get(DEFAULT_LANGUAGE) or next(iter(text.values()), "")
