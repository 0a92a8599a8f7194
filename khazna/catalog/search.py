"""Full-text search over the catalog, with facets.

One interface, two indexes chosen by the database (``make_search_index``):

- SQLite: FTS5 with the ``unicode61`` tokenizer and ``remove_diacritics 2``, ranked by
  its ``bm25``.
- PostgreSQL: a ``tsvector`` of the same words with a GIN index for matching, ranked
  with the same BM25 formula as FTS5, so both give the same results in the same order.

Both index the *folded* text (catalog/text.py): "donnees" finds "données", Arabic is
matched as written, whatever the database's locale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    cast,
    delete,
    distinct,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.dialects.postgresql import insert as pg_insert

from khazna import db
from khazna.access.accounts import Principal
from khazna.access.policy import AccessPolicy
from khazna.catalog.formats import format_label
from khazna.catalog.text import fold, lead, snippet, terms
from khazna.errors import BadRequest

FTS_TABLE = "dataset_search"
MAX_LIMIT = 1000
_fts = Table(
    FTS_TABLE,
    MetaData(),
    Column("rowid", Integer),
    Column("title", Text),
    Column("description", Text),
    Column("tags", Text),
    Column("files", Text),
    Column("org", Text),
)
# Column weights for bm25: a word in the title counts most.
_WEIGHTS = (10.0, 3.0, 6.0, 2.0, 1.0)


def fts_query(q: str) -> str:
    """User text -> FTS5 query: every word must match, as a prefix, quoted (no syntax)."""
    return " ".join(f'"{t}"*' for t in terms(q))


def make_search_index(engine: Engine, policy: AccessPolicy) -> SearchIndex:
    """The index of the engine's database; its table is made by the migrations."""
    if engine.dialect.name == "postgresql":
        return PostgresSearchIndex(engine, policy)
    return SqliteSearchIndex(engine, policy)


class SearchIndex:
    """Indexes datasets inside the catalog's transactions; searches with facets."""

    def __init__(self, engine: Engine, policy: AccessPolicy) -> None:
        self.engine = engine
        self.policy = policy

    def _store(self, conn: Connection, dataset_id: int, columns: dict[str, str]) -> None:
        """Replace the indexed text of a dataset: folded text by column of ``_fts``."""
        raise NotImplementedError

    def _match(self, q: str, conditions: list[Any]) -> Select[Any] | None:
        """``SELECT datasets.id`` of the visible matches; None when nothing can match."""
        raise NotImplementedError

    def _page(
        self, conn: Connection, q: str, matched: Select[Any], limit: int, offset: int
    ) -> list[int]:
        """The ids of one page of matches, best first."""
        raise NotImplementedError

    def index(self, conn: Connection, dataset_id: int) -> None:
        """(Re)index one dataset inside the caller's transaction."""
        d, o = db.datasets, db.organizations
        row = conn.execute(
            select(d, o.c.name.label("org_name"), o.c.title.label("org_title"))
            .join(o, o.c.id == d.c.org_id)
            .where(d.c.id == dataset_id)
        ).one()
        tags = (
            conn.execute(
                select(db.dataset_tags.c.tag).where(db.dataset_tags.c.dataset_id == dataset_id)
            )
            .scalars()
            .all()
        )
        files = (
            conn.execute(
                select(db.version_files.c.name)
                .join(db.versions, db.versions.c.id == db.version_files.c.version_id)
                .where(
                    db.versions.c.dataset_id == dataset_id,
                    db.versions.c.number == row.current_version,
                )
            )
            .scalars()
            .all()
        )
        self._store(
            conn,
            dataset_id,
            {
                "title": fold("\n".join(row.title.values())),
                "description": fold("\n".join(row.description.values())),
                "tags": fold(" ".join(tags)),
                "files": fold(" ".join(files)),
                "org": fold(" ".join([row.org_name, *row.org_title.values()])),
            },
        )
        conn.execute(
            delete(db.dataset_formats).where(db.dataset_formats.c.dataset_id == dataset_id)
        )
        formats = sorted({format_label(f) for f in files})
        if formats:
            conn.execute(
                insert(db.dataset_formats),
                [{"dataset_id": dataset_id, "format": f} for f in formats],
            )

    def search(
        self,
        who: Principal,
        q: str = "",
        *,
        org: str | None = None,
        tag: str | None = None,
        format: str | None = None,
        license: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        if not 0 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 0 and {MAX_LIMIT}", field="limit")
        if offset < 0:
            raise BadRequest("offset must be 0 or more", field="offset")
        d, o = db.datasets, db.organizations
        conditions = [self.policy.visible_datasets(who)]
        if org:
            conditions.append(d.c.org_id.in_(select(o.c.id).where(o.c.name == org)))
        if tag:
            conditions.append(
                d.c.id.in_(select(db.dataset_tags.c.dataset_id).where(db.dataset_tags.c.tag == tag))
            )
        if format:
            conditions.append(
                d.c.id.in_(
                    select(db.dataset_formats.c.dataset_id).where(
                        func.lower(db.dataset_formats.c.format) == format.lower()
                    )
                )
            )
        if license:
            conditions.append(d.c.license == license)

        matched: Select[Any] | None
        if terms(q):
            matched = self._match(q, conditions)
        elif q.strip():
            matched = None  # only punctuation: nothing can match
        else:
            matched = select(d.c.id).where(*conditions)
        if matched is None:
            return {"count": 0, "results": [], "facets": _empty_facets()}

        ids = matched.scalar_subquery()
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(matched.subquery())).scalar_one()
            if terms(q):
                page = self._page(conn, q, matched, limit, offset)
            else:
                newest = matched.order_by(d.c.updated_at.desc(), d.c.id.desc())
                page = list(conn.execute(newest.limit(limit).offset(offset)).scalars())
            facets = self._facets(conn, ids)
            results = self._describe(conn, page, terms(q))
        return {"count": int(count), "results": results, "facets": facets}

    def _facets(self, conn: Connection, ids: Any) -> dict[str, dict[str, int]]:
        d, o = db.datasets, db.organizations
        queries = {
            "org": select(o.c.name, func.count(distinct(d.c.id)))
            .join(o, o.c.id == d.c.org_id)
            .where(d.c.id.in_(ids))
            .group_by(o.c.name),
            "tag": select(db.dataset_tags.c.tag, func.count())
            .where(db.dataset_tags.c.dataset_id.in_(ids))
            .group_by(db.dataset_tags.c.tag),
            "format": select(db.dataset_formats.c.format, func.count())
            .where(db.dataset_formats.c.dataset_id.in_(ids))
            .group_by(db.dataset_formats.c.format),
            "license": select(d.c.license, func.count())
            .where(d.c.id.in_(ids), d.c.license != "")
            .group_by(d.c.license),
        }
        out: dict[str, dict[str, int]] = {}
        for name, stmt in queries.items():
            rows = conn.execute(stmt).all()
            # Most frequent first, then by value, so the order is stable.
            out[name] = {str(v): int(n) for v, n in sorted(rows, key=lambda r: (-r[1], r[0]))}
        return out

    def _describe(
        self, conn: Connection, ids: list[int], query_terms: list[str]
    ) -> list[dict[str, Any]]:
        if not ids:
            return []
        d, o = db.datasets, db.organizations
        rows = {
            int(r.id): r
            for r in conn.execute(
                select(d, o.c.name.label("org_name"))
                .join(o, o.c.id == d.c.org_id)
                .where(d.c.id.in_(ids))
            )
        }
        tags: dict[int, list[str]] = {i: [] for i in ids}
        for dataset_id, tag in conn.execute(
            select(db.dataset_tags.c.dataset_id, db.dataset_tags.c.tag)
            .where(db.dataset_tags.c.dataset_id.in_(ids))
            .order_by(db.dataset_tags.c.tag)
        ):
            tags[int(dataset_id)].append(str(tag))
        files: dict[int, list[str]] = {i: [] for i in ids}
        if query_terms:
            v, vf = db.versions, db.version_files
            for dataset_id, file_name in conn.execute(
                select(v.c.dataset_id, vf.c.name)
                .join(vf, vf.c.version_id == v.c.id)
                .join(d, (d.c.id == v.c.dataset_id) & (d.c.current_version == v.c.number))
                .where(v.c.dataset_id.in_(ids))
                .order_by(vf.c.name)
            ):
                files[int(dataset_id)].append(str(file_name))
        results = []
        for hit in ids:
            row = rows[hit]
            first_description = next(iter(row.description.values()), "")
            passage = None
            if query_terms:
                # What the result does not show already comes first; the title is shown.
                texts = [
                    *row.description.values(),
                    *files[hit],
                    " ".join(tags[hit]),
                    *row.title.values(),
                ]
                passage = snippet(texts, query_terms)
            if passage is None:
                passage = lead(first_description)
            results.append(
                {
                    "org": row.org_name,
                    "name": row.name,
                    "title": row.title,
                    "description": row.description,
                    "tags": tags[hit],
                    "license": row.license,
                    "access": row.access,
                    "version": row.current_version,
                    "updated_at": db.iso(row.updated_at),
                    "snippet": passage,
                }
            )
        return results


def _empty_facets() -> dict[str, dict[str, int]]:
    return {"org": {}, "tag": {}, "format": {}, "license": {}}


class SqliteSearchIndex(SearchIndex):
    """FTS5: matching and bm25 ranking inside SQLite."""

    def _store(self, conn: Connection, dataset_id: int, columns: dict[str, str]) -> None:
        conn.execute(delete(_fts).where(_fts.c.rowid == dataset_id))
        conn.execute(insert(_fts).values(rowid=dataset_id, **columns))

    def _match(self, q: str, conditions: list[Any]) -> Select[Any] | None:
        d = db.datasets
        return (
            select(d.c.id)
            .select_from(d.join(_fts, _fts.c.rowid == d.c.id))
            .where(text(f"{FTS_TABLE} MATCH :q").bindparams(q=fts_query(q)), *conditions)
        )

    def _page(
        self, conn: Connection, q: str, matched: Select[Any], limit: int, offset: int
    ) -> list[int]:
        d = db.datasets
        rank = func.bm25(literal_column(FTS_TABLE), *_WEIGHTS)
        ranked = matched.add_columns(rank.label("rank")).order_by(literal_column("rank"), d.c.id)
        return [int(r.id) for r in conn.execute(ranked.limit(limit).offset(offset))]


# PostgreSQL ---------------------------------------------------------------------------

_pg = Table(
    FTS_TABLE,
    MetaData(),
    Column("dataset_id", Integer, primary_key=True),
    Column("title", Text),
    Column("description", Text),
    Column("tags", Text),
    Column("files", Text),
    Column("org", Text),
    Column("size", Integer),
    Column("document", TSVECTOR),
)
_COLUMNS = ("title", "description", "tags", "files", "org")
# Words as FTS5's unicode61 tokenizer cuts folded text: letters and digits; "_" separates.
_TOKEN = re.compile(r"[^\W_]+")
# PostgreSQL refuses longer lexemes, and keeps at most this many positions of one.
_MAX_LEXEME_BYTES = 2046
_MAX_POSITIONS = 256
# FTS5's bm25 constants.
_K1, _B = 1.2, 0.75

Phrase = tuple[str, ...]


def _lexeme(token: str) -> str:
    raw = token.encode()
    if len(raw) <= _MAX_LEXEME_BYTES:
        return token
    return raw[:_MAX_LEXEME_BYTES].decode(errors="ignore")


def _tokens(folded: str) -> list[str]:
    return [_lexeme(t) for t in _TOKEN.findall(folded)]


def phrases(q: str) -> list[Phrase]:
    """The query as FTS5 reads ``fts_query``: each word a phrase of its parts ("_" splits
    "rgph_2024" into rgph then 2024), the last part a prefix; a phrase of no part is
    dropped, as FTS5 ignores it."""
    return [p for p in (tuple(_tokens(t)) for t in terms(q)) if p]


def _tsquery(phrase_list: Sequence[Phrase]) -> str:
    # Lexemes are letters and digits only, so quoting them needs no escaping.
    return " & ".join(
        " <-> ".join(f"'{t}'" + (":*" if i == len(p) - 1 else "") for i, t in enumerate(p))
        for p in phrase_list
    )


def _tsvector(columns: Sequence[list[str]]) -> str:
    """Every word with its positions; a gap between columns keeps phrases inside one."""
    positions: dict[str, list[int]] = {}
    at = 0
    for tokens in columns:
        for token in tokens:
            at += 1
            positions.setdefault(token, []).append(min(at, 16383))
        at += 1
    return " ".join(
        f"'{t}':" + ",".join(str(p) for p in sorted(set(ps))[:_MAX_POSITIONS])
        for t, ps in positions.items()
    )


def _occurrences(phrase: Phrase, tokens: list[str]) -> int:
    *exact, prefix = phrase
    n = len(phrase)
    return sum(
        1
        for i in range(len(tokens) - n + 1)
        if tokens[i : i + n - 1] == exact and tokens[i + n - 1].startswith(prefix)
    )


class PostgresSearchIndex(SearchIndex):
    """A tsvector with a GIN index finds the matches; they are ranked here with FTS5's
    bm25 (the same weights, constants and statistics), so the order is SQLite's."""

    def _store(self, conn: Connection, dataset_id: int, columns: dict[str, str]) -> None:
        tokens = [_tokens(columns[c]) for c in _COLUMNS]
        values = {
            **{c: " ".join(t) for c, t in zip(_COLUMNS, tokens, strict=True)},
            "size": sum(len(t) for t in tokens),
            "document": cast(_tsvector(tokens), TSVECTOR),
        }
        # An upsert: two writers reindexing one dataset at once must not collide.
        stmt = pg_insert(_pg).values(dataset_id=dataset_id, **values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[_pg.c.dataset_id],
                set_={k: stmt.excluded[k] for k in values},
            )
        )

    def _match(self, q: str, conditions: list[Any]) -> Select[Any] | None:
        found = phrases(q)
        if not found:
            return None
        d = db.datasets
        return (
            select(d.c.id)
            .select_from(d.join(_pg, _pg.c.dataset_id == d.c.id))
            .where(_document_matches(found), *conditions)
        )

    def _page(
        self, conn: Connection, q: str, matched: Select[Any], limit: int, offset: int
    ) -> list[int]:
        found = phrases(q)
        rows, total = conn.execute(
            select(func.count(), func.coalesce(func.sum(_pg.c.size), 0))
        ).one()
        avgdl = int(total) / int(rows)
        idf: dict[Phrase, float] = {}
        for p in set(found):
            hits = conn.execute(
                select(func.count()).select_from(_pg).where(_document_matches([p]))
            ).scalar_one()
            idf[p] = math.log((rows - hits + 0.5) / (hits + 0.5))
            if idf[p] <= 0.0:
                idf[p] = 1e-6
        ids = matched.with_only_columns(db.datasets.c.id).subquery()
        scored = []
        for r in conn.execute(
            select(_pg.c.dataset_id, _pg.c.size, *(_pg.c[c] for c in _COLUMNS)).where(
                _pg.c.dataset_id.in_(select(ids.c.id))
            )
        ):
            columns = [str(r._mapping[c]).split() for c in _COLUMNS]
            score = 0.0
            for p in found:
                freq = sum(
                    w * _occurrences(p, tokens) for w, tokens in zip(_WEIGHTS, columns, strict=True)
                )
                score += idf[p] * (
                    (freq * (_K1 + 1.0)) / (freq + _K1 * (1 - _B + _B * r.size / avgdl))
                )
            # FTS5's rank is the negated score, ascending, then the id.
            scored.append((-1.0 * score, int(r.dataset_id)))
        scored.sort()
        return [dataset_id for _, dataset_id in scored[offset : offset + limit]]


def _document_matches(phrase_list: Sequence[Phrase]) -> Any:
    query = text("CAST(:tsq AS tsquery)").bindparams(tsq=_tsquery(phrase_list))
    return _pg.c.document.op("@@")(query)
