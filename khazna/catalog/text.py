"""Text folding for search, and highlighted snippets built from the original text.

Search matches a *folded* form of both the catalog's text and the query:

- compatibility forms decomposed (NFKD: ligatures, Arabic presentation forms);
- combining marks removed: Latin accents ("données" = "donnees") and Arabic harakat
  and hamza marks on alef ("السُّكَّان" = "السكان", "أ" / "إ" / "آ" = "ا");
- case folded;
- the Arabic letter normalizations of Lucene's ArabicNormalizer: teh marbuta "ة" as heh
  "ه", alef maqsura "ى" as yeh "ي", alef wasla "ٱ" as alef, tatweel "ـ" removed.

The folded text is never shown: snippets are cut from the text as it was written.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

_ARABIC_LETTERS = str.maketrans(
    {"\u0629": "\u0647", "\u0649": "\u064a", "\u0671": "\u0627", "\u0640": None}
)
# A word as written: letters and digits with their combining marks and tatweel. "_" and
# punctuation separate words, as in the FTS5 unicode61 tokenizer.
_WORD = re.compile(r"(?:[^\W_]|[\u0300-\u036f\u0610-\u061a\u064b-\u065f\u0670\u0640])+")
SNIPPET_WORDS = 24
SNIPPET_LEAD = 4


def fold(text: str) -> str:
    """The form that is indexed and searched."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return bare.casefold().translate(_ARABIC_LETTERS)


def terms(query: str) -> list[str]:
    """The folded words of a query."""
    return re.findall(r"\w+", fold(query))


def snippet(texts: Iterable[str], query_terms: list[str]) -> str | None:
    """HTML: the passage that best explains a match, the matching words in <mark>.

    A word matches when its folded form starts with a query word, as in the index ("_"
    joins parts that the index reads as a phrase: each part is marked). The best text
    covers the most distinct query words, then has the most matches; the first on a tie.
    None when no text matches (the dataset matched on something not shown).
    """
    parts = tuple(p for t in query_terms for p in t.split("_") if p)
    if not parts:
        return None
    best: tuple[tuple[int, int], str, list[re.Match[str]], list[int]] | None = None
    for text in texts:
        words = list(_WORD.finditer(text))
        folded = [fold(w.group()) for w in words]
        hits = [i for i, f in enumerate(folded) if f.startswith(parts)]
        if not hits:
            continue
        covered = sum(1 for p in set(parts) if any(folded[i].startswith(p) for i in hits))
        score = (covered, len(hits))
        if best is None or score > best[0]:
            best = (score, text, words, hits)
    if best is None:
        return None
    _, text, words, hits = best
    # A few words before the first match, sliding back so a short text shows whole.
    first = max(0, min(hits[0] - SNIPPET_LEAD, len(words) - SNIPPET_WORDS))
    last = min(len(words), first + SNIPPET_WORDS) - 1
    start = words[first].start() if first > 0 else 0
    end = words[last].end() if last < len(words) - 1 else len(text)
    out = ["…"] if start > 0 else []
    cursor = start
    for i in hits:
        if not first <= i <= last:
            continue
        w = words[i]
        out += [html.escape(text[cursor : w.start()]), "<mark>", html.escape(w.group()), "</mark>"]
        cursor = w.end()
    out.append(html.escape(text[cursor:end]))
    if end < len(text):
        out.append("…")
    return "".join(out).strip()


def lead(text: str, limit: int = 200) -> str:
    """HTML: the start of a text, for results listed without a query."""
    return html.escape(text[:limit] + ("…" if len(text) > limit else ""))
