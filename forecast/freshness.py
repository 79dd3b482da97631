"""Is a run still current? What the store holds now against what the run saw.

A run records, in its manifest, the evidence it saw: a digest of each of the
target's rows (natural key → content) and one digest per reference theater
(`seen`). `check` rebuilds the same views from the store as of the run's date
and says what changed since: target rows added, changed or removed, reference
theaters whose evidence changed, and the command that refits. The page's banner,
`forecast show --json` (`stale`) and reports all read `check`.

Rows known only after the run's as-of date do not make a run stale: the run is
the forecast as of that date. Older runs without the record fall back to the
run's data hash (stale or not, without the detail).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from forecast.features import TheaterPanel, data_hash
from forecast.store import row_id
from forecast.store_schema import digest


def _content(row) -> str:
    return digest(row.model_dump_json())[:16]


def row_digests(panel: TheaterPanel) -> dict[str, str]:
    """The panel's rows as {row id (the store's digest of the natural key): digest of the content}."""
    return {row_id(r): _content(r) for r in panel.rows}


def seen(panels: list[TheaterPanel], target: str) -> dict:
    """What a run saw, as its manifest records it."""
    return {"target_rows": row_digests(next(p for p in panels if p.id == target)),
            "reference": {p.id: data_hash([p]) for p in panels if p.id != target}}


@dataclass
class Freshness:
    """The store against a run: `stale` when anything the run used differs now."""

    stale: bool
    added: int = 0  # target rows known by the as-of date that the run did not see
    changed: int = 0
    removed: int = 0
    reference_changed: list[str] = field(default_factory=list)  # reference theaters changed, added or removed
    detail: bool = True  # False: an older run without the record, only the data hash compared
    command: str = ""

    def summary(self) -> str:
        if not self.stale:
            return "The run saw every row the store holds for its as-of date."
        if not self.detail:
            return f"The evidence for this run's as-of date has changed since it was fitted. Refit: {self.command}"
        parts = [f"{n} row{'s' if n != 1 else ''} {what}" for n, what in
                 ((self.added, "added"), (self.changed, "changed"), (self.removed, "removed")) if n]
        if self.reference_changed:
            n = len(self.reference_changed)
            parts.append(f"{n} reference case{'s' if n != 1 else ''} changed ({', '.join(self.reference_changed[:5])}"
                         + (", …" if n > 5 else "") + ")")
        return f"Evidence changed since this run: {'; '.join(parts)}. Refit: {self.command}"

    def as_dict(self) -> dict:
        return {"stale": self.stale, "added": self.added, "changed": self.changed, "removed": self.removed,
                "reference_changed": self.reference_changed, "detail": self.detail, "command": self.command,
                "summary": self.summary()}


def compare(manifest: dict, panels: list[TheaterPanel]) -> Freshness:
    """The run of `manifest` against `panels`, the store's view as of the run's date."""
    theater = manifest["theater"]
    command = f"forecast refit {theater} --as-of {manifest['as_of']}"
    record = manifest.get("seen")
    if record is None:
        return Freshness(data_hash(panels) != manifest["data_hash"], detail=False, command=command)
    now = seen(panels, theater)
    before_rows, now_rows = record["target_rows"], now["target_rows"]
    added = sum(k not in before_rows for k in now_rows)
    removed = sum(k not in now_rows for k in before_rows)
    changed = sum(k in before_rows and before_rows[k] != v for k, v in now_rows.items())
    ids = set(record["reference"]) | set(now["reference"])
    reference = sorted(t for t in ids if record["reference"].get(t) != now["reference"].get(t))
    return Freshness(bool(added or removed or changed or reference), added, changed, removed, reference,
                     command=command)


def check(eng, run) -> Freshness | None:
    """The store now against `run` (None: the run's theater can no longer be assembled from the store)."""
    from forecast import dataset

    try:
        panels, _ = dataset.from_store(eng, run.manifest["theater"], dt.date.fromisoformat(run.manifest["as_of"]))
    except dataset.DatasetError:
        return None
    return compare(run.manifest, panels)


def in_run(manifest: dict, row) -> bool:
    """Whether the run saw `row` as it is now (same key, same content)."""
    record = manifest.get("seen")
    if record is None:
        return row.known_on <= dt.date.fromisoformat(manifest["as_of"]) and row.kind != "outcome"
    return record["target_rows"].get(row_id(row)) == _content(row)
