"""Forecast reports a decision-maker can read: HTML, PDF and JSON from one stored run.

Every number in a report comes from a stored run (its forecast.json, manifest
and profile.toml) or from a forecast the caller computed from that run's draws
(the dashboard's reweighting). The report names the run id, data hash, prior
profile and hash, the run's code version, the code version that rendered it
and when.

API (used by the CLI and the dashboard)::

    from forecast import report, runs, store

    run = runs.require_published(theater)                 # or any runs.Run
    rows = store.load_evidence(eng, theater)              # Evidence objects
    data = report.render(run, rows, "html")               # bytes: "html" | "pdf" | "json"

    # the dashboard, exporting a reweighted forecast of the same run:
    doc = predict.summarise(run.draws(), weights)         # optionally with doc["pareto_k"] = k
    data = report.render(run, rows, "pdf", forecast_override=doc,
                         profile_override_text=new_profile.text)

``render(run, evidence_rows, fmt, forecast_override=None, profile_override_text=None,
*, theater_name=None, freshness=None, generated_at=None) -> bytes``

- ``evidence_rows``: the theater's evidence; the report lists the rows the run
  could see (known by its as-of date, outcome rows left out) and counts the others.
- ``forecast_override``: a forecast document shaped like ``predict.summarise``'s
  (as_of, prob, words, timing, cumulative, drivers, history, baseline_log_odds);
  optional ``pareto_k`` and ``ess`` (top-level or inside a ``reweighted`` dict) are shown. Must be given together
  with ``profile_override_text`` (the TOML of the profile it was reweighted to), so
  the priors the report shows are the ones behind its numbers.
- ``theater_name``: a readable title (default: the theater id).
- ``freshness``: `forecast.freshness.check(eng, run)`, the store now against what
  the run saw; when the run is stale the report says what changed and how to refit.
- ``generated_at``: a timezone-aware datetime (default: now, UTC).

``content(...)`` (same arguments, no ``fmt``) returns the report as a dict; the
JSON format is exactly that dict. HTML is one self-contained file (charts are
PNG data URIs; no scripts, no external resources), rendered by Jinja2 with
autoescaping, so text an analyst typed (notes, sources, profile names) shows as
text and runs nothing; only http(s) evidence URLs become links. The PDF is
WeasyPrint's rendering of the same HTML, allowed to fetch nothing but data URIs.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from pathlib import Path

import jinja2
import numpy as np

from forecast import priors, reweight, runs, wording
from forecast.features import INDICATORS, label

FORMATS = ("html", "pdf", "json")
REPORT_VERSION = 1

_FORECAST_KEYS = ("as_of", "prob", "words", "timing", "cumulative", "drivers", "history")


class ReportError(ValueError):
    """Arguments a report cannot be made from."""


# --- content ------------------------------------------------------------------------------


def content(run: runs.Run, evidence_rows, forecast_override: dict | None = None,
            profile_override_text: str | None = None, *, theater_name: str | None = None,
            freshness=None, generated_at: dt.datetime | None = None, hypothetical: list[dict] | None = None) -> dict:
    """The report as a JSON-ready dict (see the module docstring for the arguments).

    `hypothetical`: the what-if rows behind `forecast_override` (never stored as evidence): the report is
    marked hypothetical throughout, and may be as of a later date than the run.
    """
    if (forecast_override is None) != (profile_override_text is None):
        raise ReportError("forecast_override and profile_override_text go together: a reweighted forecast "
                          "is reported with the profile it was reweighted to")
    m = run.manifest
    doc = forecast_override if forecast_override is not None else run.forecast()
    missing = [k for k in _FORECAST_KEYS if k not in doc]
    if missing:
        raise ReportError(f"forecast document lacks {', '.join(missing)}")
    if hypothetical is not None and forecast_override is None:
        raise ReportError("hypothetical rows come with the forecast they give (forecast_override)")
    if str(doc["as_of"]) != str(m["as_of"]) and hypothetical is None:
        raise ReportError(f"forecast as of {doc['as_of']} is not of run {m['run_id']} (as of {m['as_of']})")
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc)
    as_of = dt.date.fromisoformat(m["as_of"])
    used, later = _evidence(evidence_rows, m["theater"], as_of)
    profile_text = profile_override_text if profile_override_text is not None else run.profile_text()
    reweighted = None
    if forecast_override is not None:
        info = forecast_override.get("reweighted")
        info = info if isinstance(info, dict) else {}
        reweighted = {"from_run": m["run_id"], "fitted_prior_profile": m["prior_profile"],
                      "fitted_prior_hash": m["prior_hash"],
                      "pareto_k": _num(forecast_override.get("pareto_k", info.get("pareto_k"))),
                      "ess": _num(forecast_override.get("ess", info.get("ess")))}
    forecast_part = {k: doc[k] for k in ("prob", "words", "timing", "cumulative", "history", "drivers")}
    forecast_part["baseline_log_odds"] = doc.get("baseline_log_odds")
    forecast_part["log_odds_now"] = doc.get("log_odds_now")
    diagnostics = dict(m["diagnostics"])
    return {
        "report_version": REPORT_VERSION,
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "generator_code_version": runs.code_version(),
        "theater": {"id": m["theater"], "name": theater_name or m["theater"]},
        "as_of": m["as_of"],
        "run": {"run_id": m["run_id"], "status": m["status"], "reason": m.get("reason"),
                "created_at": m["created_at"], "as_of": m["as_of"], "data_hash": m["data_hash"],
                "prior_profile": m["prior_profile"], "prior_hash": m["prior_hash"],
                "code_version": m["code_version"], "sampler": m.get("sampler", {}),
                "reference_class": m.get("reference_class", [])},
        "evidence_changed": bool(freshness is not None and freshness.stale),
        "freshness": None if freshness is None else freshness.as_dict(),
        "pareto_k_max": reweight.PARETO_K_MAX,
        "reweighted": reweighted,
        "hypothetical_rows": hypothetical,
        "forecast_as_of": str(doc["as_of"]),
        "key_judgment": wording.key_judgment({**doc, "as_of": m["as_of"]}),
        "forecast": forecast_part,
        "priors": _priors(profile_text),
        "diagnostics": {**diagnostics, "gate": dict(runs.GATE), "gate_failures": runs.gate(diagnostics)},
        "evidence": used,
        "evidence_not_used": later,
        "estimative_language": _bands(),
        "interval_meaning": wording.INTERVAL_MEANING,
    }


def _num(value):
    return None if value is None else round(float(value), 4)


def _bands() -> list[dict]:
    out, low = [], 0.0
    for high, word in wording.WORDS:
        out.append({"words": word, "from": low, "to": min(high, 1.0)})
        low = high
    return out


def _evidence(rows, theater: str, as_of: dt.date) -> tuple[list[dict], int]:
    """The rows the run could see (known by as_of; no outcome), date order; and how many it could not."""
    used, later = [], 0
    for r in rows:
        if r.theater != theater or r.kind == "outcome":
            continue
        if r.known_on > as_of:
            later += 1
            continue
        url = r.url or None
        used.append({"date": str(r.date), "reported": None if r.reported is None else str(r.reported),
                     "kind": r.kind, "what": r.describe(), "source": r.source, "url": url,
                     "link": bool(url) and url.lower().startswith(("http://", "https://")), "notes": r.notes})
    used.sort(key=lambda e: (e["date"], e["kind"]))
    return used, later


def _stated(s: priors.Stated) -> dict:
    return {"value": s.value, "range": [s.low, s.high], "unit": s.unit, "rationale": s.rationale}


def _priors(text: str) -> dict:
    """The profile used, item by item, with the default's statement wherever it differs."""
    try:
        used = priors.parse(text, "the run's profile")
    except priors.ProfileError as err:
        return {"profile": None, "error": str(err), "items": [], "differs_from_default": []}
    try:
        default = priors.load("default")
        default_error = None
    except priors.ProfileError as err:
        default, default_error = None, str(err)
    items = []

    def add(key: str, label: str, mine: priors.Stated, theirs: priors.Stated | None, spread: bool = False):
        entry = {"item": key, "label": label, **_stated(mine)}
        if spread:
            entry["range"] = None
        same = theirs is not None and (mine.value, mine.low, mine.high) == (theirs.value, theirs.low, theirs.high)
        entry["default"] = None if theirs is None or same else (
            {"value": theirs.value, "range": None if spread else [theirs.low, theirs.high]})
        items.append(entry)

    add("base_rate", "Base rate: P(escalation within 90 days), no special signs", used.base_rate,
        default.base_rate if default else None)
    add("theater_spread", "Theater spread: odds ratio vs reference class (90% bound)", used.theater_spread,
        default.theater_spread if default else None, spread=True)
    for name in INDICATORS:
        add(f"indicators.{name}", f"{label(name)}: likelihood ratio", used.indicators[name],
            default.indicators[name] if default else None)
    return {"profile": used.name, "description": used.description, "hash": used.hash,
            "default_hash": default.hash if default else None, "default_error": default_error,
            "is_default": default is not None and used.hash == default.hash,
            "items": items, "differs_from_default": [i["item"] for i in items if i["default"] is not None]}


# --- charts (matplotlib's object API: no pyplot state, safe in a server) ---------------------


def _figure(width: float = 7.0, height: float = 2.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, fig.subplots()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _dates(values) -> np.ndarray:
    return np.array([np.datetime64(v, "D") for v in values])


def _percent_axis(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def history_chart(forecast_part: dict) -> str | None:
    hist = forecast_part["history"]
    if not hist:
        return None
    fig, ax = _figure()
    x = _dates(h["date"] for h in hist)
    ax.fill_between(x, [h["lo"] for h in hist], [h["hi"] for h in hist], color="#9ecae1", alpha=0.6,
                    label="80% interval", step=None)
    ax.plot(x, [h["mean"] for h in hist], color="#08519c", label="P(within 30 days) as said on each date")
    reliable = [h.get("reliable", True) for h in hist]
    ax.scatter([d for d, ok in zip(x, reliable) if ok], [h["mean"] for h, ok in zip(hist, reliable) if ok],
               s=12, color="#08519c", zorder=3)
    ax.scatter([d for d, ok in zip(x, reliable) if not ok], [h["mean"] for h, ok in zip(hist, reliable) if not ok],
               s=14, facecolors="white", edgecolors="#08519c", zorder=3, label="unreliable (Pareto k > 0.7)")
    ax.plot(x, [h.get("hindsight", h["mean"]) for h in hist], color="#888888", ls="--", lw=1, label="in hindsight")
    for bound, _word in wording.WORDS[:-1]:
        ax.axhline(bound, color="#bbbbbb", lw=0.6, ls=":")
    ax.set_ylim(0, 1)
    ax.set_ylabel("P(escalation within 30 days)")
    ax.set_title("Forecast history: the 30-day forecast as of each past week", fontsize=9)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    _percent_axis(ax)
    fig.autofmt_xdate()
    return _png(fig)


def timing_chart(forecast_part: dict) -> str | None:
    cum = forecast_part["cumulative"]
    if not cum:
        return None
    fig, ax = _figure()
    x = _dates(c["date"] for c in cum)
    ax.fill_between(x, [c["lo"] for c in cum], [c["hi"] for c in cum], color="#fdae6b", alpha=0.5,
                    label="80% interval")
    ax.plot(x, [c["mean"] for c in cum], color="#a63603", label="P(escalation by date)")
    t = forecast_part["timing"]
    for key, style in (("p10", ":"), ("median", "--"), ("p90", ":")):
        if t.get(key):
            ax.axvline(np.datetime64(t[key], "D"), color="#555555", ls=style, lw=0.8)
            ax.annotate(key, (np.datetime64(t[key], "D"), 0.97), fontsize=7, ha="center", va="top",
                        xycoords=("data", "axes fraction"))
    ax.set_ylim(0, max(0.05, min(1.0, max(c["hi"] for c in cum) * 1.1)))
    ax.set_ylabel("cumulative probability")
    ax.set_title("Timing: probability of escalation by each date", fontsize=9)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    _percent_axis(ax)
    fig.autofmt_xdate()
    return _png(fig)


def drivers_chart(forecast_part: dict) -> str | None:
    drivers = [d for d in forecast_part["drivers"] if abs(d["log_odds"]) >= 0.005 or abs(d["hi"] - d["lo"]) >= 0.01]
    if not drivers:
        return None
    drivers = drivers[::-1]  # largest at the top
    fig, ax = _figure(7.0, 0.35 * len(drivers) + 1.0)
    y = np.arange(len(drivers))
    values = np.array([d["log_odds"] for d in drivers])
    err = np.array([[d["log_odds"] - d["lo"] for d in drivers], [d["hi"] - d["log_odds"] for d in drivers]])
    ax.barh(y, values, xerr=np.clip(err, 0, None), color=np.where(values >= 0, "#cb181d", "#2171b5"),
            alpha=0.8, error_kw={"lw": 0.8, "capsize": 2})
    ax.set_yticks(y, [label(d["indicator"]) for d in drivers], fontsize=7)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("contribution to today's log-odds of escalation (80% interval)")
    ax.set_title("Drivers: what moves the forecast, versus a quiet baseline", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


# --- rendering ----------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("forecast", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = wording.pct
    env.filters["span"] = wording.span
    env.filters["share"] = lambda p: f"{p:.0%}"  # a band edge or a share, not a forecast
    env.filters["num"] = lambda x, d=2: "—" if x is None else f"{x:,.{d}f}"
    env.filters["signed"] = lambda x: f"{x:+.2f}"
    env.filters["odds"] = lambda x: f"×{math.exp(x):.2f}"
    env.filters["label"] = label
    env.filters["g"] = lambda x: f"{x:g}"
    env.filters["words"] = wording.words
    return env


def html(doc: dict) -> str:
    """The HTML of a report content dict (charts drawn here)."""
    charts = {"history": history_chart(doc["forecast"]), "timing": timing_chart(doc["forecast"]),
              "drivers": drivers_chart(doc["forecast"])}
    return _environment().get_template("report.html.j2").render(r=doc, charts=charts)


def _url_fetcher():
    """WeasyPrint may read the report's data: URIs and nothing else (no network, no files)."""
    try:
        from weasyprint.urls import URLFetcher
    except ImportError:  # WeasyPrint < 66: a function fetcher
        import weasyprint

        def fetch(url, *args, **kwargs):
            if not url.startswith("data:"):
                raise ValueError(f"the report fetches no external resource: {url[:80]}")
            return weasyprint.default_url_fetcher(url, *args, **kwargs)
        return fetch
    return URLFetcher(allowed_protocols={"data"})


def pdf(html_text: str) -> bytes:
    import weasyprint

    return weasyprint.HTML(string=html_text, base_url=None, url_fetcher=_url_fetcher()).write_pdf()


def render(run: runs.Run, evidence_rows, fmt: str, forecast_override: dict | None = None,
           profile_override_text: str | None = None, **kwargs) -> bytes:
    """The report of `run` in `fmt` ("html", "pdf" or "json") as bytes. See the module docstring."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")
    doc = content(run, evidence_rows, forecast_override, profile_override_text, **kwargs)
    if fmt == "json":
        return (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    text = html(doc)
    return text.encode("utf-8") if fmt == "html" else pdf(text)


def write(data: bytes, path: Path) -> None:
    """Write a report atomically; only a regular file is replaced (forecast.safe_write)."""
    from forecast import safe_write

    safe_write.write_bytes(Path(path), data)
