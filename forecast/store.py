"""Evidence store: SQLite by default, any SQLAlchemy URL via FORECAST_DB_URL.

One table per evidence kind (columns generated from the pydantic schema), a
theaters table, a change log, and a schema version. Imports run in one
transaction: all rows land or none do.

Schema versions (upgrades are applied in place by `upgrade`, rows kept):
  1  theaters + six evidence tables
  2  adds `date_precision` to every evidence table and the `evidence_changes` log
  3  `row_key` holds the SHA-256 of the natural key (long keys overflowed PostgreSQL's index limit)
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import types
import typing
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from forecast import config
from forecast.schema import KINDS, MODEL_BY_KIND, Evidence, Theater, kind_fields

SCHEMA_VERSION = 3
metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

theaters = sa.Table(
    "theaters",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("start", sa.Date, nullable=False),
    sa.Column("garrison", sa.Float),
    sa.Column("garrison_source", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("notes", sa.Text),
)

evidence_changes = sa.Table(
    "evidence_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.String(40), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("old", sa.Text),
    sa.Column("new", sa.Text, nullable=False),
    sa.Column("origin", sa.Text),
    sa.Column("changed_at", sa.DateTime, nullable=False),
)


def _column_type(annotation) -> sa.types.TypeEngine:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[X] -> X
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return {dt.date: sa.Date(), float: sa.Float(), bool: sa.Boolean()}.get(annotation, sa.Text())


def _evidence_table(kind: str) -> sa.Table:
    model = MODEL_BY_KIND[kind]
    columns = [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("row_key", sa.String(400), nullable=False, unique=True),
        sa.Column("theater", sa.String(80), sa.ForeignKey("theaters.id"), nullable=False, index=True),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("reported", sa.Date),
        sa.Column("date_precision", sa.String(8), nullable=False, server_default="day"),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("notes", sa.Text),
    ]
    for name in kind_fields(kind):
        columns.append(sa.Column(name, _column_type(model.model_fields[name].annotation)))
    columns.append(sa.Column("imported_at", sa.DateTime, nullable=False))
    return sa.Table(f"ev_{kind}", metadata, *columns)


EVIDENCE_TABLES: dict[str, sa.Table] = {kind: _evidence_table(kind) for kind in KINDS}


def engine(url: str | None = None) -> sa.Engine:
    return _engine_for(url or config.db_url())


@functools.lru_cache(maxsize=8)
def _engine_for(url: str) -> sa.Engine:
    """One engine (and connection pool) per URL for the life of the process."""
    eng = sa.create_engine(url)
    if eng.dialect.name == "sqlite":
        @sa.event.listens_for(eng, "connect")
        def _foreign_keys(dbapi_connection, _record):  # SQLite leaves them off by default
            dbapi_connection.execute("PRAGMA foreign_keys=ON")
    return eng


def digest(readable_key: str) -> str:
    return hashlib.sha256(readable_key.encode("utf-8")).hexdigest()


# --- schema version and upgrades -------------------------------------------------


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(schema_version.c.version)).scalar() or 0


def _upgrade_1_to_2(conn: sa.Connection) -> None:
    ops = Operations(MigrationContext.configure(conn))
    for table in EVIDENCE_TABLES.values():
        ops.add_column(table.name, sa.Column("date_precision", sa.String(8), nullable=False, server_default="day"))
    evidence_changes.create(conn)


def _upgrade_2_to_3(conn: sa.Connection) -> None:
    for table in EVIDENCE_TABLES.values():
        for row_id, key in conn.execute(sa.select(table.c.id, table.c.row_key)).all():
            conn.execute(table.update().where(table.c.id == row_id).values(row_key=digest(key)))


UPGRADES = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}


def upgrade(eng: sa.Engine) -> tuple[int, int]:
    """Create the store or bring an older one to SCHEMA_VERSION; returns (before, after)."""
    with eng.begin() as conn:
        before = current_version(conn)
        if before == 0:
            metadata.create_all(conn)
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            return before, SCHEMA_VERSION
        if before > SCHEMA_VERSION:
            raise RuntimeError(f"store schema v{before} is newer than this code (v{SCHEMA_VERSION}); upgrade the package")
        for version in range(before, SCHEMA_VERSION):
            UPGRADES[version](conn)
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
    return before, SCHEMA_VERSION


def require_current(eng: sa.Engine) -> None:
    with eng.connect() as conn:
        version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"the evidence store has schema v{version}, newer than this code "
                           f"(v{SCHEMA_VERSION}): upgrade the package")
    if version != SCHEMA_VERSION:
        raise RuntimeError("the evidence store is missing or out of date: run `forecast init`")


# --- writing -----------------------------------------------------------------------


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def as_dict(self) -> dict:
        return {"inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged}


def _comparable(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def write(eng: sa.Engine, theater_rows: list[Theater], evidence: list[Evidence], origin: str) -> ImportResult:
    """Upsert theaters and evidence in one transaction; record every change."""
    result = ImportResult()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with eng.begin() as conn:
        for theater in theater_rows:
            _upsert(conn, theaters, theaters.c.id == theater.id, theater.model_dump(exclude={"kind"}),
                    f"theater:{theater.id}", origin, now, result)
        for row in evidence:
            table = EVIDENCE_TABLES[row.kind]
            key = json.dumps(row.key(), default=str)
            values = {**row.model_dump(exclude={"kind"}), "row_key": digest(key)}
            _upsert(conn, table, table.c.row_key == values["row_key"], values, key, origin, now, result,
                    stamp="imported_at")
    return result


def _upsert(conn, table, where, values, key, origin, now, result, stamp=None) -> None:
    existing = conn.execute(sa.select(table).where(where)).mappings().first()
    if existing is None:
        conn.execute(table.insert().values(**values, **({stamp: now} if stamp else {})))
        result.inserted += 1
        return
    old = {k: existing[k] for k in values}
    if _comparable(old) == _comparable(values):
        result.unchanged += 1
        return
    conn.execute(table.update().where(where).values(**values, **({stamp: now} if stamp else {})))
    conn.execute(evidence_changes.insert().values(
        table_name=table.name, row_key=key, old=_comparable(old), new=_comparable(values), origin=origin, changed_at=now))
    result.updated += 1


# --- reading -----------------------------------------------------------------------


def theater_ids(eng: sa.Engine) -> set[str]:
    with eng.connect() as conn:
        if not sa.inspect(conn).has_table("theaters"):
            return set()
        return set(conn.execute(sa.select(theaters.c.id)).scalars())


def load_theaters(eng: sa.Engine) -> list[Theater]:
    with eng.connect() as conn:
        rows = conn.execute(sa.select(theaters).order_by(theaters.c.id)).mappings().all()
    return [Theater.model_validate(dict(r)) for r in rows]


def load_evidence(eng: sa.Engine, theater: str | None = None, kind: str | None = None) -> list[Evidence]:
    """Evidence rows as schema objects, in date order."""
    out: list[Evidence] = []
    with eng.connect() as conn:
        for k in [kind] if kind else KINDS:
            table = EVIDENCE_TABLES[k]
            query = sa.select(table)
            if theater:
                query = query.where(table.c.theater == theater)
            for r in conn.execute(query).mappings():
                values = {c: r[c] for c in r.keys() if c not in ("id", "row_key", "imported_at")}
                out.append(MODEL_BY_KIND[k].model_validate({**values, "kind": k}))
    out.sort(key=lambda e: (e.date, e.kind))
    return out


def evidence_counts(eng: sa.Engine) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    with eng.connect() as conn:
        for kind, table in EVIDENCE_TABLES.items():
            query = sa.select(table.c.theater, sa.func.count()).group_by(table.c.theater)
            for theater, n in conn.execute(query):
                counts.setdefault(theater, Counter())[kind] = n
    return counts


def change_count(eng: sa.Engine) -> int:
    with eng.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(evidence_changes)).scalar()


def theater_summaries(eng: sa.Engine) -> list[dict]:
    """Each theater with its outcome and evidence counts (the `theaters --json` shape)."""
    counts = evidence_counts(eng)
    outcomes = {o.theater: o for o in load_evidence(eng, kind="outcome")}
    out = []
    for t in load_theaters(eng):
        o = outcomes.get(t.id)
        out.append({
            "id": t.id,
            "name": t.name,
            "start": t.start.isoformat(),
            "outcome": "open" if o is None else ("escalated" if o.escalated else "none"),
            "escalation_date": o.date.isoformat() if o is not None and o.escalated else None,
            "end_date": o.date.isoformat() if o is not None and not o.escalated else None,
            "evidence": {k: counts.get(t.id, Counter())[k] for k in KINDS},
        })
    return out
