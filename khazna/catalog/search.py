"""Full-text search over the catalog, with facets.

The embedded default uses SQLite FTS5 with the ``unicode61`` tokenizer and
``remove_diacritics 2``: "donnees" finds "données", Arabic is matched as written.
"""

from __future__ import annotations

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
    delete,
    distinct,
    func,
    insert,
    literal_column,
    select,
    text,
)

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


class SearchIndex:
    def __init__(self, engine: Engine, policy: AccessPolicy) -> None:
        self.engine = engine
        self.policy = policy
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
                    "title, description, tags, files, org, "
                    "tokenize='unicode61 remove_diacritics 2')"
                )
            )

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
        conn.execute(delete(_fts).where(_fts.c.rowid == dataset_id))
        conn.execute(
            insert(_fts).values(
                rowid=dataset_id,
                title=fold("\n".join(row.title.values())),
                description=fold("\n".join(row.description.values())),
                tags=fold(" ".join(tags)),
                files=fold(" ".join(files)),
                org=fold(" ".join([row.org_name, *row.org_title.values()])),
            )
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
        query = fts_query(q)
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

        fts_ref: Any = literal_column(FTS_TABLE)
        matched: Select[Any]
        order: list[Any]
        if query:
            rank = func.bm25(fts_ref, *_WEIGHTS).label("rank")
            matched = (
                select(d.c.id, rank)
                .select_from(d.join(_fts, _fts.c.rowid == d.c.id))
                .where(text(f"{FTS_TABLE} MATCH :q").bindparams(q=query), *conditions)
            )
            order = [literal_column("rank"), d.c.id]
        elif q.strip():
            # Only punctuation: nothing can match.
            return {"count": 0, "results": [], "facets": _empty_facets()}
        else:
            matched = select(d.c.id).where(*conditions)
            order = [d.c.updated_at.desc(), d.c.id.desc()]

        ids = matched.with_only_columns(d.c.id).scalar_subquery()
        with self.engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(matched.subquery())).scalar_one()
            page = conn.execute(matched.order_by(*order).limit(limit).offset(offset)).all()
            facets = self._facets(conn, ids)
            results = self._describe(conn, list(page), terms(q))
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
        self, conn: Connection, page: list[Any], query_terms: list[str]
    ) -> list[dict[str, Any]]:
        if not page:
            return []
        d, o = db.datasets, db.organizations
        ids = [int(r.id) for r in page]
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
        for hit in page:
            row = rows[int(hit.id)]
            first_description = next(iter(row.description.values()), "")
            passage = None
            if query_terms:
                # What the result does not show already comes first; the title is shown.
                texts = [
                    *row.description.values(),
                    *files[int(hit.id)],
                    " ".join(tags[int(hit.id)]),
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
                    "tags": tags[int(hit.id)],
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
