"""The evidence store on a real database: SQLite file and PostgreSQL (see conftest.db_url)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from forecast import store, store_schema
from forecast.schema import KINDS, MODEL_BY_KIND, Theater

D = dt.date


def _theater(id_: str = "testland-2024", **over) -> Theater:
    values = dict(id=id_, name="Testland build-up", actor="Aland", target="Bland", start=D(2024, 1, 1),
                  garrison=12000.0, garrison_source="Defence white paper 2023", source="Test Gazette, 2024-01-01",
                  url="https://example.org/a", notes="made for tests")
    return Theater(**{**values, **over})


def _one_of_each(theater: str = "testland-2024") -> list:
    """One row of every kind, with every optional field filled (so every column round-trips)."""
    common = dict(theater=theater, source="Test Gazette", url="https://example.org/x", notes="a note")
    rows = [
        dict(kind="troops", date="2024-01-10", reported="2024-01-12", estimate=50000, low=40000, high=60000,
             source_type="government", date_precision="week"),
        dict(kind="unit_move", date="2024-01-11", unit="5th Tank Brigade", direction="arrive",
             home_district="Far East", distance_km=5200.5),
        dict(kind="exercise", date="2024-01-05", name="Winter Shield", start="2024-01-20", end="2024-02-01",
             announced_by="Aland MoD"),
        dict(kind="sign", date="2024-01-15", category="medical", description="field hospitals set up",
             date_precision="month"),
        dict(kind="claim", date="2024-01-20", claim_type="withdrawal", verified=False, verified_by="NATO"),
        dict(kind="outcome", date="2024-02-24", escalated=True),
    ]
    assert {r["kind"] for r in rows} == set(KINDS)
    return [MODEL_BY_KIND[r["kind"]].model_validate({**common, **r}) for r in rows]


def _counts(eng) -> dict:
    with eng.connect() as conn:
        out = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
               for t in store_schema.EVIDENCE_TABLES.values()}
        out["theaters"] = conn.execute(sa.select(sa.func.count()).select_from(store_schema.theaters)).scalar()
    out["changes"] = store.change_count(eng)
    return out


@pytest.fixture
def eng(db_url):
    engine = store.engine(db_url)
    store_schema.upgrade(engine)
    yield engine
    engine.dispose()


# --- round trip -------------------------------------------------------------------------


def test_new_store_is_current(eng):
    with eng.connect() as conn:
        assert store_schema.current_version(conn) == store_schema.SCHEMA_VERSION
    store_schema.require_current(eng)  # does not raise
    assert store_schema.upgrade(eng) == (store_schema.SCHEMA_VERSION, store_schema.SCHEMA_VERSION)  # idempotent


def test_round_trip_every_kind(eng):
    theater = _theater()
    rows = _one_of_each()
    result = store.write(eng, [theater], rows, origin="test")
    assert result.as_dict() == {"inserted": 1 + len(KINDS), "updated": 0, "unchanged": 0}

    assert store.load_theaters(eng) == [theater]
    loaded = store.load_evidence(eng, "testland-2024")
    assert len(loaded) == len(KINDS)
    by_kind = {r.kind: r for r in loaded}
    for row in rows:
        got = by_kind[row.kind]
        assert type(got) is type(row)
        assert got.model_dump() == row.model_dump(), row.kind
    # in date order
    assert [r.date for r in loaded] == sorted(r.date for r in loaded)
    # types survive the database (dates are dates, booleans booleans, floats floats)
    assert by_kind["troops"].reported == D(2024, 1, 12)
    assert by_kind["claim"].verified is False and by_kind["outcome"].escalated is True
    assert by_kind["unit_move"].distance_km == pytest.approx(5200.5)
    assert by_kind["exercise"].end == D(2024, 2, 1)

    for kind in KINDS:
        only = store.load_evidence(eng, "testland-2024", kind)
        assert [r.kind for r in only] == [kind]


def test_round_trip_optional_fields_left_empty(eng):
    store.write(eng, [_theater(garrison=None, garrison_source=None, url=None, notes=None)], [], "test")
    row = MODEL_BY_KIND["troops"].model_validate(
        dict(kind="troops", theater="testland-2024", date="2024-01-10", estimate=1000, source="S",
             source_type="media"))
    store.write(eng, [], [row], "test")
    (got,) = store.load_evidence(eng, "testland-2024")
    assert got == row and got.low is None and got.reported is None and got.date_precision == "day"
    (theater,) = store.load_theaters(eng)
    assert theater.garrison is None and theater.url is None


def test_summaries_and_counts(eng):
    store.write(eng, [_theater(), _theater("other-2024", name="Other")], _one_of_each(), "test")
    summaries = {s["id"]: s for s in store.theater_summaries(eng)}
    assert summaries["testland-2024"]["outcome"] == "escalated"
    assert summaries["testland-2024"]["escalation_date"] == "2024-02-24"
    assert summaries["testland-2024"]["evidence"] == {k: 1 for k in KINDS}
    assert summaries["other-2024"]["outcome"] == "open"
    assert summaries["other-2024"]["escalation_date"] is None
    assert summaries["other-2024"]["evidence"] == {k: 0 for k in KINDS}
    assert store.theater_ids(eng) == {"testland-2024", "other-2024"}


def test_rewrite_same_rows_changes_nothing(eng):
    store.write(eng, [_theater()], _one_of_each(), "first")
    before = _counts(eng)
    result = store.write(eng, [_theater()], _one_of_each(), "second")
    assert result.as_dict() == {"inserted": 0, "updated": 0, "unchanged": 1 + len(KINDS)}
    assert _counts(eng) == before


def test_changed_row_is_updated_and_logged(eng):
    store.write(eng, [_theater()], _one_of_each(), "first")
    rows = _one_of_each()
    troops = next(r for r in rows if r.kind == "troops")
    rows[rows.index(troops)] = troops.model_copy(update={"estimate": 55000.0, "notes": "revised"})
    result = store.write(eng, [], rows, "revision")
    assert result.as_dict() == {"inserted": 0, "updated": 1, "unchanged": len(KINDS) - 1}
    assert store.change_count(eng) == 1
    (got,) = store.load_evidence(eng, "testland-2024", "troops")
    assert got.estimate == 55000 and got.notes == "revised"
    with eng.connect() as conn:
        change = conn.execute(sa.select(store_schema.evidence_changes)).mappings().one()
    assert change["table_name"] == "ev_troops" and change["origin"] == "revision"
    assert json.loads(change["old"])["estimate"] == 50000 and json.loads(change["new"])["estimate"] == 55000


# --- transactions -----------------------------------------------------------------------


def test_write_is_all_or_nothing_on_a_database_error(eng):
    store.write(eng, [_theater()], _one_of_each()[:2], "first")
    before = _counts(eng)
    good = _one_of_each()
    # A row the database itself refuses (NOT NULL source), after good inserts and an update.
    changed = good[0].model_copy(update={"estimate": 1.0})
    broken = type(good[3]).model_construct(**{**good[3].model_dump(), "source": None, "date": D(2024, 3, 1)})
    with pytest.raises(sa.exc.IntegrityError):
        store.write(eng, [_theater("new-2024", name="New")], [changed, *good[1:], broken], "doomed")
    assert _counts(eng) == before
    assert store.theater_ids(eng) == {"testland-2024"}
    assert store.load_evidence(eng, "testland-2024", "troops")[0].estimate == 50000


def test_write_is_all_or_nothing_when_interrupted(eng, monkeypatch):
    store.write(eng, [_theater()], [], "first")
    before = _counts(eng)
    real_upsert = store._upsert
    calls = []

    def upsert_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash mid-write")
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(store, "_upsert", upsert_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write(eng, [_theater(), _theater("new-2024", name="New")], _one_of_each(), "doomed")
    assert len(calls) == 4  # three writes went through inside the transaction before the crash
    assert _counts(eng) == before
    assert store.theater_ids(eng) == {"testland-2024"}


# --- schema versions and upgrades -------------------------------------------------------


def _v1_metadata() -> sa.MetaData:
    """Schema version 1, frozen by hand: theaters + six evidence tables, no date_precision, no change log."""
    md = sa.MetaData()
    sa.Table("schema_version", md, sa.Column("version", sa.Integer, nullable=False))
    sa.Table(
        "theaters", md,
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
    own = {
        "troops": [("estimate", sa.Float), ("low", sa.Float), ("high", sa.Float), ("source_type", sa.Text)],
        "unit_move": [("unit", sa.Text), ("direction", sa.Text), ("home_district", sa.Text),
                      ("distance_km", sa.Float)],
        "exercise": [("name", sa.Text), ("start", sa.Date), ("end", sa.Date), ("announced_by", sa.Text)],
        "sign": [("category", sa.Text), ("description", sa.Text)],
        "claim": [("claim_type", sa.Text), ("verified", sa.Boolean), ("verified_by", sa.Text)],
        "outcome": [("escalated", sa.Boolean)],
    }
    for kind, columns in own.items():
        sa.Table(
            f"ev_{kind}", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("row_key", sa.String(400), nullable=False, unique=True),
            sa.Column("theater", sa.String(80), sa.ForeignKey("theaters.id"), nullable=False, index=True),
            sa.Column("date", sa.Date, nullable=False),
            sa.Column("reported", sa.Date),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("url", sa.Text),
            sa.Column("notes", sa.Text),
            *[sa.Column(name, type_()) for name, type_ in columns],
            sa.Column("imported_at", sa.DateTime, nullable=False),
        )
    return md


def _make_v1_store(url: str) -> list:
    """Create a version-1 store by hand with one theater and one row of each kind; return the rows."""
    md = _v1_metadata()
    theater = _theater()
    rows = [r.model_copy(update={"date_precision": "day"}) for r in _one_of_each()]  # v1 had no date_precision
    rows.append(MODEL_BY_KIND["sign"].model_validate(
        dict(kind="sign", theater=theater.id, date="2024-01-16", category="bridging",
             description="pontoons by the river", source="Test Gazette")))
    eng = sa.create_engine(url)
    try:
        with eng.begin() as conn:
            md.create_all(conn)
            conn.execute(md.tables["schema_version"].insert().values(version=1))
            conn.execute(md.tables["theaters"].insert().values(**theater.model_dump(exclude={"kind", "replay_of"})))
            for row in rows:
                values = row.model_dump(exclude={"kind", "date_precision", "credibility"})  # v6 added it
                conn.execute(md.tables[f"ev_{row.kind}"].insert().values(
                    **values, row_key=json.dumps(row.key(), default=str),
                    imported_at=dt.datetime(2024, 3, 1, 12, 0)))
    finally:
        eng.dispose()
    return rows


def test_v1_lacks_what_upgrades_add():
    """Guard for the hand-made v1 schema: exactly the current schema minus what UPGRADES add (v2, v4, v5, v6)."""
    assert store_schema.SCHEMA_VERSION >= 2 and 1 in store_schema.UPGRADES
    v1 = _v1_metadata()
    assert set(store_schema.metadata.tables) - set(v1.tables) == {"evidence_changes"}
    assert {c.name for c in store_schema.theaters.columns} - {c.name for c in v1.tables["theaters"].columns} \
        == {"replay_of"}
    for kind, table in store_schema.EVIDENCE_TABLES.items():
        assert {c.name for c in table.columns} - {c.name for c in v1.tables[table.name].columns} \
            == {"date_precision", *store_schema.RETRACTION_COLUMNS,
                *(["credibility"] if kind in ("sign", "unit_move") else [])}, kind


def test_upgrade_v1_store_keeps_rows(db_url):
    rows = _make_v1_store(db_url)
    eng = store.engine(db_url)
    try:
        with eng.connect() as conn:
            assert store_schema.current_version(conn) == 1
        with pytest.raises(RuntimeError):
            store_schema.require_current(eng)

        assert store_schema.upgrade(eng) == (1, store_schema.SCHEMA_VERSION)

        with eng.connect() as conn:
            assert store_schema.current_version(conn) == store_schema.SCHEMA_VERSION
            assert conn.execute(sa.select(sa.func.count()).select_from(store_schema.schema_version)).scalar() == 1
        store_schema.require_current(eng)
        assert store.load_theaters(eng) == [_theater()]
        loaded = store.load_evidence(eng, "testland-2024")
        assert sorted(r.model_dump_json() for r in loaded) == sorted(r.model_dump_json() for r in rows)
        assert all(r.date_precision == "day" for r in loaded)
        assert store.change_count(eng) == 0

        # The upgraded store works like a new one: the same rows re-import unchanged,
        # a changed row is updated and logged, new columns are written.
        again = store.write(eng, [_theater()], rows, "after-upgrade")
        assert again.as_dict() == {"inserted": 0, "updated": 0, "unchanged": len(rows) + 1}
        revised = rows[0].model_copy(update={"date_precision": "month"})
        assert store.write(eng, [], [revised], "after-upgrade").updated == 1
        assert store.change_count(eng) == 1
        assert store_schema.upgrade(eng) == (store_schema.SCHEMA_VERSION, store_schema.SCHEMA_VERSION)
    finally:
        eng.dispose()


def test_upgrade_v1_store_through_cli(db_url, cli_any):
    _make_v1_store(db_url)
    refused = cli_any("theaters", "--json")
    assert refused.exit_code != 0
    assert "forecast init" in refused.stderr and refused.stdout == ""

    summary = cli_any.json("init")
    assert (summary["schema_from"], summary["schema_to"]) == (1, store_schema.SCHEMA_VERSION)
    theaters = {t["id"]: t for t in cli_any.json("theaters")}
    assert theaters["testland-2024"]["evidence"]["sign"] == 2  # the v1 rows are still there
    assert len(theaters) > 20  # and init loaded the bundled cases on top


def test_require_current_refuses_missing_store(db_url):
    eng = store.engine(db_url)
    try:
        with pytest.raises(RuntimeError, match="forecast init"):
            store_schema.require_current(eng)
    finally:
        eng.dispose()


def test_require_current_refuses_old_store_with_clear_message(db_url):
    _make_v1_store(db_url)
    eng = store.engine(db_url)
    try:
        with pytest.raises(RuntimeError) as err:
            store_schema.require_current(eng)
        message = str(err.value)
        assert "out of date" in message and "forecast init" in message
    finally:
        eng.dispose()


def test_store_newer_than_code_is_refused(db_url):
    eng = store.engine(db_url)
    try:
        store_schema.upgrade(eng)
        with eng.begin() as conn:
            conn.execute(store_schema.schema_version.update().values(version=store_schema.SCHEMA_VERSION + 1))
        with pytest.raises(RuntimeError, match="newer"):
            store_schema.upgrade(eng)
        with pytest.raises(RuntimeError):
            store_schema.require_current(eng)
    finally:
        eng.dispose()
