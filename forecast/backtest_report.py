"""The backtest's outputs: CSV tables, reliability and public-record charts, the terminal summary.

`write_outputs(doc, folder)` writes every file of one `forecast backtest` run
(each atomically) from the document `forecast.backtest.run` returns;
`text_summary(doc)` is what the command prints.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from forecast import report
from forecast.predict import HORIZONS


def _csv(header: list[str], rows: list[list]) -> bytes:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows(rows)
    return text.getvalue().encode("utf-8")


def write_outputs(doc: dict, out: Path) -> list[str]:
    """CSV tables, the two charts and the JSON document, each written atomically; returns the files written."""
    hs = [str(h) for h in HORIZONS]
    files = []
    out.mkdir(parents=True, exist_ok=True)

    def add(name, fn, *args):
        report.write(fn(*args), out / name)
        files.append(str(out / name))

    add("forecasts.csv", _csv, ["case", "as_of", "method", "pareto_k", "ess"]
        + [f"{k}_{h}" for h in hs for k in ("p", "lo", "hi", "p_population", "observed", "climatology")],
        [[f["case"], f["as_of"], f["method"], f["pareto_k"], f["ess"]]
         + [v for h in hs for v in (f["prob"][h]["mean"], f["prob"][h]["lo"], f["prob"][h]["hi"],
                                    f["prob_population"][h]["mean"], f["observed"][h], f["climatology"][h])]
         for f in doc["forecasts"]])
    add("cases.csv", _csv, ["case", "outcome", "start", "end_date", "forecasts"]
        + [f"{k}_{h}" for h in hs for k in ("mean_prob", "last_prob", "observed_rate", "brier", "brier_climatology")],
        [[c["id"], c["outcome"], c["start"], c["end_date"], c["forecasts"]]
         + [c[k][h] for h in hs for k in ("mean_prob", "last_prob", "observed_rate", "brier", "brier_climatology")]
         for c in doc["cases"]])
    add("scores.csv", _csv, ["horizon", "brier", "brier_climatology", "brier_skill", "brier_skill_lo",
                             "brier_skill_hi", "log_score", "log_score_climatology", "ece", "auc", "base_rate",
                             "brier_skill_population", "auc_population", "n"],
        [[h, doc["brier"][h], doc["brier_climatology"][h], doc["brier_skill"][h],
          doc["brier_skill_interval"][h]["lo"], doc["brier_skill_interval"][h]["hi"], doc["log_score"][h],
          doc["log_score_climatology"][h], doc["ece"][h], doc["auc"][h], doc["base_rate"][h],
          doc["population"]["brier_skill"][h], doc["population"]["auc"][h], doc["n_forecasts"]]
         for h in hs])
    add("reliability.csv", _csv, ["horizon", "lo", "hi", "n", "mean_forecast", "observed"],
        [[h, b["lo"], b["hi"], b["n"], b["mean_forecast"], b["observed"]] for h in hs for b in doc["reliability"][h]])
    add("metaculus.csv", _csv, ["date", "metaculus", "metaculus_relation", "engine", "engine_lo", "engine_hi",
                                "engine_within_30", "engine_within_90", "difference"],
        [[m["date"], m["metaculus"], m["metaculus_relation"], m["engine"]["mean"], m["engine"]["lo"],
          m["engine"]["hi"], m["engine_within_30"]["mean"], m["engine_within_90"]["mean"], m["difference"]]
         for m in doc["metaculus"]["rows"]])
    add("reliability.png", _plot_reliability, doc)
    if doc["metaculus"]["rows"]:
        add("metaculus.png", _plot_metaculus, doc)
    files.append(str(out / "backtest.json"))
    report.write(json.dumps({**doc, "files": files}, indent=2).encode("utf-8"), out / "backtest.json")
    return files


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _plot_reliability(doc: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HORIZONS), figsize=(4.2 * len(HORIZONS), 4.4), sharey=True)
    for ax, h in zip(np.atleast_1d(axes), map(str, HORIZONS)):
        bins = [b for b in doc["reliability"][h] if b["n"]]
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
        ax.scatter([b["mean_forecast"] for b in bins], [b["observed"] for b in bins],
                   s=[20 + 4 * b["n"] for b in bins], color="C0", alpha=0.8, label="bins (area ~ count)")
        for b in bins:
            ax.annotate(str(b["n"]), (b["mean_forecast"], b["observed"]), textcoords="offset points",
                        xytext=(6, -10), fontsize=8)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="forecast probability",
               title=f"{h} days: Brier skill {doc['brier_skill'][h]}, ECE {doc['ece'][h]}")
    np.atleast_1d(axes)[0].set_ylabel("observed frequency")
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Leave-one-case-out reliability ({doc['n_forecasts']} forecasts, {len(doc['cases'])} cases)")
    fig.tight_layout()
    return _png(fig)


def _plot_metaculus(doc: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = doc["metaculus"]["rows"]
    dates = [np.datetime64(r["date"]) for r in rows]
    engine = np.array([r["engine"]["mean"] for r in rows])
    err = np.array([[r["engine"]["mean"] - r["engine"]["lo"] for r in rows],
                    [r["engine"]["hi"] - r["engine"]["mean"] for r in rows]])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.errorbar(dates, engine, yerr=err, fmt="o-", color="C3", capsize=4, label="engine (80% interval)")
    ax.plot(dates, [r["metaculus"] for r in rows], "s--", color="C0", label="Metaculus community (^: above)")
    for d, r in zip(dates, rows):
        if r["metaculus_relation"] == "above":
            ax.annotate("^", (d, r["metaculus"]), textcoords="offset points", xytext=(0, 6), ha="center",
                        color="C0", fontsize=9)
    ax.axvline(np.datetime64("2022-02-24"), color="grey", ls=":", lw=1)
    ax.annotate("invasion\n2022-02-24", (np.datetime64("2022-02-24"), 0.04), fontsize=8, ha="right")
    ax.set(ylim=(0, 1), ylabel="P(invasion before 2023)", title=rows[0]["question"])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


SCORE_COLUMNS = ("brier", "brier_skill", "log_score", "ece", "auc", "false_alarm_share")


def score_table(rows: list[dict], horizons, name: str, tag: str) -> list[str]:
    """Scores side by side for a terminal: one line per row and horizon (`name`, `tag`: the rows' label keys)."""
    lines = [f"  {name:22} {tag.replace('_', ' '):16} {'h':>3} {'Brier':>7} {'skill':>7} {'90% (cases)':>17} "
             f"{'log':>7} {'ECE':>6} {'AUC':>6} {'false al.':>9}"]
    for r in rows:
        for h in map(str, horizons):
            ci = r["brier_skill_interval"][h]
            lines.append(f"  {r[name]:22} {str(r[tag]):16} {h:>3} {_num(r['brier'][h], '7.3f')} "
                         f"{_num(r['brier_skill'][h], '+7.3f')} {_num(ci['lo'], '+8.3f')} to {_num(ci['hi'], '+.3f')} "
                         f"{_num(r['log_score'][h], '7.3f')} {_num(r['ece'][h], '6.3f')} {_num(r['auc'][h], '6.2f')} "
                         f"{_num(r['false_alarm_share'][h], '9.0%')}")
    return lines


def score_csv(rows: list[dict], horizons, name: str, tag: str) -> str:
    """The same table as CSV: one line per row and horizon."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([name, tag, "horizon", *SCORE_COLUMNS, "skill_lo", "skill_hi", "n_forecasts"])
    for r in rows:
        for h in map(str, horizons):
            ci = r["brier_skill_interval"][h]
            writer.writerow([r[name], r[tag], h, *(r[c][h] for c in SCORE_COLUMNS), ci["lo"], ci["hi"],
                             r["n_forecasts"]])
    return buffer.getvalue()


def _num(value, spec: str) -> str:
    """A score as the table prints it; "n/a" where it is undefined (no alarm raised, one class only...)."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return f"{'n/a':>{width or 0}}" if value is None else format(value, spec)


def text_summary(doc: dict) -> str:
    """The scores for a terminal."""
    lines = [f"backtest: {len(doc['cases'])} cases, {doc['n_forecasts']} leave-one-case-out forecasts, "
             f"{doc['seconds']} s", "",
             f"  {'horizon':>8} {'Brier':>7} {'clim.':>7} {'skill':>7} {'90% (cases)':>17} {'log':>7} "
             f"{'ECE':>6} {'AUC':>6} {'false alarms':>13}"]
    for h in map(str, HORIZONS):
        auc_, ci = doc["auc"][h], doc["brier_skill_interval"][h]
        interval = f"[{ci['lo']:+.2f}, {ci['hi']:+.2f}]"
        auc_text = "n/a" if auc_ is None else f"{auc_:.3f}"
        alarms = doc["false_alarm_share"][h]
        alarm_text = "no alarm" if alarms is None else f"{alarms:.0%}"
        lines.append(f"  {h + ' d':>8} {doc['brier'][h]:7.4f} {doc['brier_climatology'][h]:7.4f} "
                     f"{doc['brier_skill'][h]:+7.3f} {interval:>17} {doc['log_score'][h]:7.4f} "
                     f"{doc['ece'][h]:6.3f} {auc_text:>6} {alarm_text:>13}")
    pop = doc["population"]["brier_skill"]
    lines += ["", "  Brier skill without the survival update (fresh theater effect only): "
              + ", ".join(f"{h} d {pop[h]:+.3f}" for h in map(str, HORIZONS)),
              f"  importance weights: max Pareto k {doc['importance']['pareto_k_max']}, "
              f"{doc['importance']['exact_refits']} forecast(s) replaced by exact refits"]
    if doc["exactness"]["checks"]:
        e = doc["exactness"]
        lines.append(f"  weighted vs exact refit on {len(e['checks'])} forecasts: mean |diff| "
                     + ", ".join(f"{h} d {e['mean_abs_diff'][h]:.3f}" for h in map(str, HORIZONS))
                     + "; max " + ", ".join(f"{e['max_abs_diff'][h]:.3f}" for h in map(str, HORIZONS)))
    if doc["metaculus"]["rows"]:
        lines += ["", f"  {doc['metaculus']['rows'][0]['question']}",
                  f"  {'date':10}  {'Metaculus':>10}  {'engine':>7}  80% interval"]
        for r in doc["metaculus"]["rows"]:
            sign = ">" if r["metaculus_relation"] == "above" else "~"
            lines.append(f"  {r['date']}  {sign + format(r['metaculus'], '.0%'):>10}  {r['engine']['mean']:7.1%}  "
                         f"{r['engine']['lo']:.0%}–{r['engine']['hi']:.0%}")
    g = doc["diagnostics"]
    lines += ["", f"  fits {g['fits']} ({g['compiles']} compiled, {g['compile_reuses']} reused), max R-hat "
                  f"{g['r_hat_max']}, min bulk ESS {g['ess_bulk_min']}, divergences {g['divergences']}"]
    if doc.get("files"):
        lines += ["", "  files: " + ", ".join(doc["files"])]
    return "\n".join(lines)
