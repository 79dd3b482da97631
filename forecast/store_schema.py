"""The store's tables and their versions: what `forecast init` creates and how an older store is upgraded.

One table per evidence kind (columns generated from the pydantic schema), a theaters table, a
change log, and a schema version. Versions (upgrades are applied in place by `upgrade`, rows kept):
  1  theaters + six evidence tables
  2  adds `date_precision` to every evidence table and the `evidence_changes` log
  3  `row_key` holds the SHA-256 of the natural key (long keys overflowed PostgreSQL's index limit)
  4  `retracted_at`, `retracted_reason`, `retracted_by` on every evidence table (`forecast retract`)
  5  `replay_of` on theaters: a replayed case (`forecast replay`) names its source, which its fits leave out
  6  `credibility` on the sign and unit_move tables (issue 18: how far a report could be believed)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import types
import typing

import sqlalchemy as sa

from forecast.schema import KINDS, MODEL_BY_KIND, kind_fields

SCHEMA_VERSION = 6
RETRACTION_COLUMNS = ("retracted_at", "retracted_reason", "retracted_by")

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
    sa.Column("replay_of", sa.String(80)),
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
    if typing.get_origin(annotation) is typing.Annotated:  # the schema's strict types: Annotated[float, ...]
        annotation = typing.get_args(annotation)[0]
    return {dt.date: sa.Date(), float: sa.Float(), bool: sa.Boolean()}.get(annotation, sa.Text())


def _retraction_columns() -> list[sa.Column]:
    return [sa.Column("retracted_at", sa.DateTime), sa.Column("retracted_reason", sa.Text),
            sa.Column("retracted_by", sa.Text)]


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
    columns += _retraction_columns()
    return sa.Table(f"ev_{kind}", metadata, *columns)


EVIDENCE_TABLES: dict[str, sa.Table] = {kind: _evidence_table(kind) for kind in KINDS}


def digest(readable_key: str) -> str:
    return hashlib.sha256(readable_key.encode("utf-8")).hexdigest()


# --- schema version and upgrades -------------------------------------------------


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(schema_version.c.version)).scalar() or 0


def _operations(conn: sa.Connection):
    """Alembic's schema operations on `conn` (imported here: only an upgrade needs them)."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    return Operations(MigrationContext.configure(conn))


def _upgrade_1_to_2(conn: sa.Connection) -> None:
    ops = _operations(conn)
    for table in EVIDENCE_TABLES.values():
        ops.add_column(table.name, sa.Column("date_precision", sa.String(8), nullable=False, server_default="day"))
    evidence_changes.create(conn)


def _upgrade_2_to_3(conn: sa.Connection) -> None:
    for table in EVIDENCE_TABLES.values():
        for row_id, key in conn.execute(sa.select(table.c.id, table.c.row_key)).all():
            conn.execute(table.update().where(table.c.id == row_id).values(row_key=digest(key)))


def _upgrade_3_to_4(conn: sa.Connection) -> None:
    ops = _operations(conn)
    for table in EVIDENCE_TABLES.values():
        for column in _retraction_columns():
            ops.add_column(table.name, column)


def _upgrade_4_to_5(conn: sa.Connection) -> None:
    _operations(conn).add_column("theaters", sa.Column("replay_of", sa.String(80)))


def _upgrade_5_to_6(conn: sa.Connection) -> None:
    ops = _operations(conn)
    for kind in ("sign", "unit_move"):
        ops.add_column(EVIDENCE_TABLES[kind].name, sa.Column("credibility", sa.Text))


UPGRADES = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3, 3: _upgrade_3_to_4, 4: _upgrade_4_to_5, 5: _upgrade_5_to_6}


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
