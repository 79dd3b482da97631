"""Evidence store: SQLite by default, any SQLAlchemy URL via FORECAST_DB_URL.

Reading and writing rows; the tables and their schema versions are `forecast.store_schema`.
Imports run in one transaction: all rows land or none do. A retracted row (`forecast retract`)
stays in the store and its history in `evidence_changes`, but no fit, count or listing uses it.

A row's public id (`row_id`, shown by `forecast evidence`) is the first 12 hex digits of its
`row_key`: it depends only on the row's natural key, so it is the same in every store.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from pydantic import ValidationError

from forecast import config
from forecast.schema import KINDS, MODEL_BY_KIND, Evidence, Theater
from forecast.store_schema import EVIDENCE_TABLES, RETRACTION_COLUMNS, digest, evidence_changes, theaters

ROW_ID_LENGTH = 12
WRITE_ATTEMPTS = 3  # a write that collides with a concurrent import (IntegrityError) is retried this often


class StoreError(RuntimeError):
    """The store cannot be used (bad URL, unreachable, in memory for a write...): exit 1."""


class ImportConflict(StoreError):
    """A concurrent import kept colliding with this one; nothing was written."""


class RetractError(ValueError):
    """A retraction that cannot be made (unknown row, already retracted, no reason): exit 2."""

def engine(url: str | None = None) -> sa.Engine:
    return _engine_for(url or config.db_url())


def shown(url: str) -> str:
    """A store URL fit to print: the password hidden."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as it was given, minus any user:password@
        return url.split("@")[-1]


def is_memory(url: str) -> bool:
    """An in-memory SQLite store (`sqlite://`, `sqlite:///`, `:memory:`): it vanishes with the process."""
    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001
        return False
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or "mode=memory" in url


def require_persistent(url: str | None = None) -> None:
    """Refuse an in-memory store for a command that writes: its rows would vanish when it ends."""
    url = url or config.db_url()
    if is_memory(url):
        raise StoreError(f"FORECAST_DB_URL={url!r} is an in-memory store, which vanishes when the command ends; "
                         "point it at a file (sqlite:////path/forecast.db) or a server")


@functools.lru_cache(maxsize=8)
def _engine_for(url: str) -> sa.Engine:
    """One engine (and connection pool) per URL for the life of the process."""
    try:
        parsed = sa.make_url(url)
        eng = sa.create_engine(parsed)
    except (sa.exc.ArgumentError, ValueError, ImportError) as err:
        raise StoreError(f"FORECAST_DB_URL={shown(url)!r} is not a usable database URL: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if eng.dialect.name == "sqlite" and parsed.database and not is_memory(url) \
            and not parsed.database.startswith("file:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise StoreError(f"FORECAST_DB_URL={shown(url)!r}: folder {folder} does not exist")
        if Path(parsed.database).is_dir():
            raise StoreError(f"FORECAST_DB_URL={shown(url)!r}: {parsed.database} is a folder, not a database file")
    if eng.dialect.name == "sqlite":
        @sa.event.listens_for(eng, "connect")
        def _foreign_keys(dbapi_connection, _record):  # SQLite leaves them off by default
            dbapi_connection.execute("PRAGMA foreign_keys=ON")
    return eng


# --- writing -----------------------------------------------------------------------


@dataclass
class ImportResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    retracted: list = field(default_factory=list)  # what `write(..., retractions=...)` withdrew

    def as_dict(self) -> dict:
        doc = {"inserted": self.inserted, "updated": self.updated, "unchanged": self.unchanged}
        return {**doc, "retracted": self.retracted} if self.retracted else doc


def _comparable(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def row_id(row: Evidence) -> str:
    """The public id of a row (see the module docstring)."""
    return digest(json.dumps(row.key(), default=str))[:ROW_ID_LENGTH]


def write(eng: sa.Engine, theater_rows: list[Theater], evidence: list[Evidence], origin: str,
          retractions: tuple = (), log_inserts: bool = False) -> ImportResult:
    """Upsert theaters and evidence in one transaction; record every change.

    `retractions`: (theater, row id, reason, by) of rows withdrawn in the same transaction (an edit
    that changes a row's key is the corrected row written and the old one retracted, or neither).
    `log_inserts`: new rows enter the change log too (a row recorded by hand: who, when and why);
    bulk imports log only changes.

    Two imports declaring the same new theater at once collide on its key (IntegrityError):
    the whole transaction is rolled back and retried, so the second sees the first's rows.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            return _write_once(eng, theater_rows, evidence, origin, retractions, log_inserts)
        except sa.exc.IntegrityError as err:
            if not _key_collision(err):
                raise  # a row the database refuses for another reason is no race: rolled back, reported
            if attempt == WRITE_ATTEMPTS:
                raise ImportConflict(f"the import collided {WRITE_ATTEMPTS} times with another write to the store "
                                     f"({str(err.orig).splitlines()[0] if err.orig else 'IntegrityError'}); "
                                     "nothing was written: try again") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _key_collision(err: sa.exc.IntegrityError) -> bool:
    """A unique or primary-key violation: another transaction inserted the same key first."""
    orig = err.orig
    return getattr(orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(orig)


def _write_once(eng: sa.Engine, theater_rows: list[Theater], evidence: list[Evidence], origin: str,
                retractions: tuple = (), log_inserts: bool = False) -> ImportResult:
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
                    stamp="imported_at", log_insert=log_inserts)
        for theater, row, reason, by in retractions:
            result.retracted.append(_retract(conn, theater, row, reason, by, now))
    return result


def _upsert(conn, table, where, values, key, origin, now, result, stamp=None, log_insert: bool = False) -> None:
    existing = conn.execute(sa.select(table).where(where)).mappings().first()
    if existing is None:
        conn.execute(table.insert().values(**values, **({stamp: now} if stamp else {})))
        if log_insert:
            conn.execute(evidence_changes.insert().values(table_name=table.name, row_key=key, old=None,
                                                          new=_comparable(values), origin=origin, changed_at=now))
        result.inserted += 1
        return
    old = {k: existing[k] for k in values}
    if _comparable(old) == _comparable(values):
        result.unchanged += 1  # a retracted row imported again as it was stays retracted
        return
    if existing.get("retracted_at") is not None:  # a corrected row replaces the retracted one
        values = {**values, **dict.fromkeys(RETRACTION_COLUMNS)}
        old = {**old, "retracted": _retraction(existing)}
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


def _retraction(r) -> dict:
    return {"at": str(r["retracted_at"]), "reason": r["retracted_reason"], "by": r["retracted_by"]}


def _stale(what: str, err: ValidationError) -> None:
    """A stored row today's rules refuse (written before they existed): left out, with a warning."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    config.warn(f"the store's {what} fails today's validation ({where}: {first['msg']}); left out of every "
                "listing and fit: retract it (`forecast retract`) or re-import it corrected")


def _theaters(conn) -> tuple[list[Theater], set[str]]:
    rows = conn.execute(sa.select(theaters).order_by(theaters.c.id)).mappings().all()
    good, bad = [], set()
    for r in rows:
        try:
            good.append(Theater.model_validate(dict(r)))
        except ValidationError as err:
            _stale(f"theater {r['id']!r}", err)
            bad.add(r["id"])
    return good, bad


def load_theaters(eng: sa.Engine) -> list[Theater]:
    with eng.connect() as conn:
        return _theaters(conn)[0]


_HIDDEN = ("id", "row_key", "imported_at", *RETRACTION_COLUMNS)


def _evidence_rows(eng: sa.Engine, theater: str | None, kind: str | None, retracted: bool):
    """(kind, stored row, Evidence) of the valid rows; retracted ones only if `retracted`."""
    with eng.connect() as conn:
        _, bad_theaters = _theaters(conn)
        for k in [kind] if kind else KINDS:
            table = EVIDENCE_TABLES[k]
            query = sa.select(table)
            if theater:
                query = query.where(table.c.theater == theater)
            if not retracted:
                query = query.where(table.c.retracted_at.is_(None))
            for r in conn.execute(query).mappings().all():
                if r["theater"] in bad_theaters:
                    continue
                values = {c: r[c] for c in r.keys() if c not in _HIDDEN}
                try:
                    row = MODEL_BY_KIND[k].model_validate({**values, "kind": k})
                except ValidationError as err:
                    _stale(f"{k} row {r['row_key'][:ROW_ID_LENGTH]} of {r['theater']!r}", err)
                    continue
                yield k, r, row


def load_evidence(eng: sa.Engine, theater: str | None = None, kind: str | None = None,
                  include_retracted: bool = False) -> list[Evidence]:
    """Evidence rows as schema objects, in date order (retracted rows left out unless asked for)."""
    out = [row for _, _, row in _evidence_rows(eng, theater, kind, include_retracted)]
    out.sort(key=lambda e: (e.date, e.kind))
    return out


def evidence_listing(eng: sa.Engine, theater: str, kind: str | None = None,
                     include_retracted: bool = False) -> list[dict]:
    """`forecast evidence --json`: each row's JSON with its `row_id` (and its retraction, if any)."""
    out = []
    for _, r, row in _evidence_rows(eng, theater, kind, include_retracted):
        doc = {"row_id": r["row_key"][:ROW_ID_LENGTH], **row.model_dump(mode="json")}
        if r["retracted_at"] is not None:
            doc["retracted"] = _retraction(r)
        out.append(doc)
    out.sort(key=lambda d: (d["date"], d["kind"]))
    return out


def current_outcomes(eng: sa.Engine) -> dict[str, tuple[str, Evidence]]:
    """Theater id -> (row id, outcome) of every stored outcome not retracted."""
    if not sa.inspect(eng).has_table(EVIDENCE_TABLES["outcome"].name):
        return {}
    return {row.theater: (r["row_key"][:ROW_ID_LENGTH], row)
            for _, r, row in _evidence_rows(eng, None, "outcome", retracted=False)}


def retraction(theater: str, row: str, reason: str, by: str | None = None) -> tuple:
    """A checked (theater, row id, reason, by) for `retract` or `write(..., retractions=...)`."""
    reason = (reason or "").strip()
    if not reason:
        raise RetractError("--reason: say why the row is withdrawn (it is kept in the change log)")
    wanted = (row or "").strip().lower()
    if not (8 <= len(wanted) <= 64 and all(c in "0123456789abcdef" for c in wanted)):
        raise RetractError(f"{row!r} is not a row id (8 to 64 hex digits, as `forecast evidence {theater}` shows)")
    return theater, wanted, reason, by


def retract(eng: sa.Engine, theater: str, row: str, reason: str, by: str | None = None) -> dict:
    """Withdraw one row: it stays stored, flagged, and the change log records who, when and why."""
    checked = retraction(theater, row, reason, by)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with eng.begin() as conn:
        return _retract(conn, *checked, now)


def _retract(conn, theater: str, wanted: str, reason: str, by: str | None, now: dt.datetime) -> dict:
    """Flag one row as retracted and log it, inside the caller's transaction."""
    if conn.execute(sa.select(theaters.c.id).where(theaters.c.id == theater)).first() is None:
        raise RetractError(f"unknown theater {theater!r}; see `forecast theaters`")
    found = []
    for kind, table in EVIDENCE_TABLES.items():
        query = sa.select(table).where(table.c.theater == theater, table.c.row_key.startswith(wanted))
        found += [(kind, table, r) for r in conn.execute(query).mappings().all()]
    if not found:
        raise RetractError(f"{theater} has no row {wanted}; `forecast evidence {theater}` lists the row ids")
    if len(found) > 1:
        raise RetractError(f"{wanted} matches {len(found)} rows of {theater}; give more digits")
    kind, table, r = found[0]
    if r["retracted_at"] is not None:
        raise RetractError(f"row {wanted} of {theater} was already retracted on {r['retracted_at']} "
                           f"({r['retracted_reason']})")
    values = {c: r[c] for c in r.keys() if c not in _HIDDEN}
    evidence = MODEL_BY_KIND[kind].model_construct(**{**values, "kind": kind})
    readable = json.dumps(evidence.key(), default=str)
    conn.execute(table.update().where(table.c.id == r["id"]).values(
        retracted_at=now, retracted_reason=reason, retracted_by=by))
    retraction = {"at": str(now), "reason": reason, "by": by}
    conn.execute(evidence_changes.insert().values(
        table_name=table.name, row_key=readable, old=_comparable(values),
        new=_comparable({**values, "retracted": retraction}), origin=f"retract by {by or 'unnamed'}",
        changed_at=now))
    return {"theater": theater, "row_id": r["row_key"][:ROW_ID_LENGTH], "kind": kind, "date": str(values["date"]),
            "key": readable, "retracted": retraction}


def evidence_counts(eng: sa.Engine) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    with eng.connect() as conn:
        for kind, table in EVIDENCE_TABLES.items():
            query = (sa.select(table.c.theater, sa.func.count()).where(table.c.retracted_at.is_(None))
                     .group_by(table.c.theater))
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
