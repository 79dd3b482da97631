"""The dashboard's charts: Altair for the page, ArviZ for the sampler diagnostics.

Each function takes a forecast document (`forecast.predict.summarise`'s shape)
or a run's stored posterior and returns a chart, a table or PNG bytes; none
reads a store or holds state. `dashboards/app.py` lays them out.
"""

from __future__ import annotations

import io
import math

import altair as alt
import numpy as np
import pandas as pd

from forecast.features import label
from forecast.model import HAZARD_PARAMS, STAGE1_VARS
from forecast.schema import KINDS

KIND_LABELS = {"troops": "troop estimate", "unit_move": "unit move", "exercise": "exercise", "sign": "sign",
               "claim": "claim", "outcome": "outcome"}
KIND_COLOURS = {"troops": "#4c78a8", "unit_move": "#f58518", "exercise": "#54a24b", "sign": "#e45756",
                "claim": "#b279a2", "outcome": "#333333"}
_PCT = ".0%"


AXIS_EXTENT = 105  # px for y-axis labels, the same on charts stacked on one time axis so they line up


def _seen_events(events: pd.DataFrame) -> pd.DataFrame:
    if not len(events):
        return events
    seen = events[(events["kind"] != "outcome") & (events["in run"].astype(bool))].copy()
    seen["day"] = seen["date"].astype(str)  # for the tooltip: the plotted date may be clipped to the window
    seen["date"] = pd.to_datetime(seen["date"])
    seen["kind label"] = seen["kind"].map(KIND_LABELS)
    return seen


def _event_tooltip() -> list:
    return [alt.Tooltip("day:N", title="date"), alt.Tooltip("kind label:N", title="kind"),
            alt.Tooltip("what:N", title="what"), alt.Tooltip("source:N", title="source")]


def history_charts(doc: dict, events: pd.DataFrame) -> tuple[alt.LayerChart, alt.Chart | None]:
    """P(escalation within 30 days) as known on each past week, and the evidence events on the same time axis.

    Two charts (drawn one above the other, same x domain and axis width, so they line up): the
    history with a faint mark at each event, and a strip with one row per evidence kind.
    """
    hist = pd.DataFrame(doc["history"])
    hist["date"] = pd.to_datetime(hist["date"])
    if "reliable" not in hist:  # a run made before the honest history
        hist["reliable"], hist["method"], hist["pareto_k"], hist["hindsight"] = True, "hindsight", None, hist["mean"]
    hist["reliability"] = np.where(hist["reliable"], "reliable", "unreliable (Pareto k > 0.7)")
    seen = _seen_events(events)
    first = hist["date"].min() - pd.Timedelta(days=14)  # the crisis window (earlier events sit on its edge)
    if len(seen):
        seen.loc[seen["date"] < first, "date"] = first
    domain = [first.isoformat(), (pd.to_datetime(doc["as_of"]) + pd.Timedelta(days=3)).isoformat()]
    x = alt.X("date:T", title=None, scale=alt.Scale(domain=domain))
    kinds = [KIND_LABELS[k] for k in KINDS if len(seen) and k in set(seen["kind"])]
    colours = [KIND_COLOURS[k] for k in KINDS if len(seen) and k in set(seen["kind"])]
    colour = alt.Color("kind label:N", scale=alt.Scale(domain=kinds, range=colours), legend=None)

    base = alt.Chart(hist)
    y_axis = alt.Axis(format=_PCT, minExtent=AXIS_EXTENT, maxExtent=AXIS_EXTENT)
    band = base.mark_area(opacity=0.22, color="#4c78a8").encode(
        x=x, y=alt.Y("lo:Q", title=None, axis=y_axis, scale=alt.Scale(domain=[0, 1])), y2="hi:Q")
    tooltip = [alt.Tooltip("date:T", title="as of"), alt.Tooltip("mean:Q", format=".1%", title="P(within 30 days)"),
               alt.Tooltip("lo:Q", format=".1%", title="80% low"), alt.Tooltip("hi:Q", format=".1%", title="80% high"),
               alt.Tooltip("method:N", title="how"), alt.Tooltip("pareto_k:Q", format=".2f", title="Pareto k"),
               alt.Tooltip("reliability:N", title="weights"),
               alt.Tooltip("hindsight:Q", format=".1%", title="in hindsight")]
    line = base.mark_line(color="#1f4e79", strokeWidth=2.5).encode(x=x, y="mean:Q")
    hindsight = base.mark_line(color="#999999", strokeDash=[5, 4], strokeWidth=1.5).encode(x=x, y="hindsight:Q")
    points = base.mark_point(size=60, color="#1f4e79").encode(
        x=x, y="mean:Q", tooltip=tooltip,
        fill=alt.condition("datum.reliable", alt.value("#1f4e79"), alt.value("white")))
    as_of = alt.Chart(pd.DataFrame({"date": [pd.to_datetime(doc["as_of"])], "text": [f"as of {doc['as_of']}"]}))
    layers = [band]
    if len(seen):
        layers.append(alt.Chart(seen).mark_rule(opacity=0.2, strokeWidth=1.5).encode(
            x=x, color=colour, tooltip=_event_tooltip()))
    layers += [hindsight, line, points, as_of.mark_rule(strokeDash=[4, 3], color="#555").encode(x="date:T"),
               as_of.mark_text(align="right", dx=-4, dy=8, color="#555").encode(x="date:T", y=alt.value(0),
                                                                               text="text:N")]
    top = alt.layer(*layers).properties(height=280, width="container",
                                        title="P(escalation within 30 days) as the engine would have said on each "
                                              "date (dashed grey: in hindsight; hollow: unreliable)")
    if not len(seen):
        return top, None
    strip = alt.Chart(seen).mark_point(filled=True, size=120, opacity=0.9).encode(
        x=x,
        y=alt.Y("kind label:N", title=None, sort=kinds, axis=alt.Axis(minExtent=AXIS_EXTENT, maxExtent=AXIS_EXTENT)),
        color=colour,
        shape=alt.Shape("kind label:N", scale=alt.Scale(domain=kinds), legend=None),
        tooltip=_event_tooltip(),
    ).properties(height=alt.Step(28), width="container", title="Evidence the run saw (hover for what and source)")
    return top, strip


def p30_distribution(values: np.ndarray, weights: np.ndarray | None) -> alt.Chart:
    """A small histogram of P(escalation within 30 days) over the posterior draws (weighted on screen)."""
    edges = np.linspace(0, 1, 21)
    counts, _ = np.histogram(values, bins=edges, weights=weights)
    frame = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "share": counts / counts.sum()})
    return alt.Chart(frame).mark_bar(color="#1f4e79").encode(
        x=alt.X("from:Q", bin="binned", title=None, axis=alt.Axis(format=_PCT, values=[0, 0.5, 1], labelFontSize=9)),
        x2="to:Q", y=alt.Y("share:Q", title=None, axis=None),
        tooltip=[alt.Tooltip("from:Q", format=".0%", title="from"), alt.Tooltip("to:Q", format=".0%", title="to"),
                 alt.Tooltip("share:Q", format=".1%", title="share of draws")],
    ).properties(height=70, width="container")


def timing_compare_chart(a: dict, b: dict, names: tuple[str, str]) -> alt.Chart:
    """Two cumulative timing curves overlaid (means), labelled A and B."""
    frames = []
    for doc, name in zip((a, b), names):
        cum = pd.DataFrame(doc["cumulative"])
        cum["date"], cum["forecast"] = pd.to_datetime(cum["date"]), name
        frames.append(cum)
    return alt.Chart(pd.concat(frames)).mark_line(strokeWidth=2.5).encode(
        x=alt.X("date:T", title=None),
        y=alt.Y("mean:Q", title="P(escalation by date)", axis=alt.Axis(format=_PCT), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("forecast:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["forecast:N", alt.Tooltip("date:T"), alt.Tooltip("mean:Q", format=".1%")],
    ).properties(height=260, width="container")


def timing_chart(doc: dict) -> alt.LayerChart:
    """Cumulative P(escalation by date) with its 80% band; median (and 10th–90th percentile) marked."""
    cum = pd.DataFrame(doc["cumulative"])
    cum["date"] = pd.to_datetime(cum["date"])
    x = alt.X("date:T", title=None)
    y = alt.Y("mean:Q", title="P(escalation by date)", axis=alt.Axis(format=_PCT), scale=alt.Scale(domain=[0, 1]))
    base = alt.Chart(cum)
    layers = []
    t = doc["timing"]
    if t.get("p10") and t.get("p90"):
        window = pd.DataFrame({"start": [pd.to_datetime(t["p10"])], "end": [pd.to_datetime(t["p90"])]})
        layers.append(alt.Chart(window).mark_rect(color="#888888", opacity=0.12).encode(x="start:T", x2="end:T"))
    layers += [
        base.mark_area(opacity=0.25, color="#e45756").encode(x=x, y=alt.Y("lo:Q", title="P(escalation by date)"),
                                                             y2="hi:Q"),
        base.mark_line(color="#b22222", strokeWidth=2.5).encode(
            x=x, y=y, tooltip=[alt.Tooltip("date:T"), alt.Tooltip("mean:Q", format=".1%", title="P(by date)"),
                               alt.Tooltip("lo:Q", format=".1%", title="80% low"),
                               alt.Tooltip("hi:Q", format=".1%", title="80% high")]),
    ]
    if t.get("median"):
        median = pd.DataFrame({"date": [pd.to_datetime(t["median"])], "text": [f"median {t['median']}"]})
        layers.append(alt.Chart(median).mark_rule(color="#333", strokeWidth=2).encode(x="date:T"))
        layers.append(alt.Chart(median).mark_text(align="left", dx=5, dy=10, fontWeight="bold", color="#333")
                      .encode(x="date:T", y=alt.value(0), text="text:N"))
    return alt.layer(*layers).properties(height=300, width="container")


def waterfall_frame(doc: dict, threshold: float = 0.005) -> pd.DataFrame:
    """Steps from the quiet baseline to the log-odds now: one row per active indicator."""
    base = doc["baseline_log_odds"]
    rows = [{"step": "Quiet baseline", "kind": "total", "start": base["mean"], "end": base["mean"],
             "lo": base["lo"], "hi": base["hi"], "log_odds": base["mean"], "odds_x": None, "value": None}]
    level = base["mean"]
    quiet = 0
    for d in doc["drivers"]:
        if abs(d["log_odds"]) < threshold:
            quiet += 1
            continue
        rows.append({"step": label(d["indicator"]), "kind": "up" if d["log_odds"] > 0 else "down",
                     "start": level, "end": level + d["log_odds"], "lo": level + d["lo"], "hi": level + d["hi"],
                     "log_odds": d["log_odds"], "odds_x": math.exp(d["log_odds"]), "value": d["value"]})
        level += d["log_odds"]
    rows.append({"step": "Now", "kind": "total", "start": level, "end": level, "lo": None, "hi": None,
                 "log_odds": level, "odds_x": None, "value": None})
    frame = pd.DataFrame(rows)
    frame.attrs["inactive"] = quiet
    return frame


def drivers_chart(doc: dict) -> alt.LayerChart:
    """Waterfall of the next day's hazard log-odds: baseline, each indicator's push (with its 80% interval), now."""
    frame = waterfall_frame(doc)
    order = list(frame["step"])
    y = alt.Y("step:N", sort=order, title=None, axis=alt.Axis(labelLimit=260))
    tooltip = [alt.Tooltip("step:N", title="indicator"), alt.Tooltip("log_odds:Q", format="+.2f", title="log-odds"),
               alt.Tooltip("odds_x:Q", format=".2f", title="odds ×"), alt.Tooltip("lo:Q", format=".2f", title="80% low"),
               alt.Tooltip("hi:Q", format=".2f", title="80% high"), alt.Tooltip("value:Q", format=".2f",
                                                                                title="indicator value")]
    colour = alt.Color("kind:N", scale=alt.Scale(domain=["up", "down", "total"],
                                                 range=["#d62728", "#2c7fb8", "#444444"]),
                       legend=alt.Legend(title=None, orient="bottom",
                                         labelExpr="{'up': 'raises risk', 'down': 'lowers risk', "
                                                   "'total': 'baseline / now'}[datum.label]"))
    chart = alt.Chart(frame)
    x = alt.X("start:Q", title="log-odds of escalation the next day", scale=alt.Scale(zero=False))
    bars = chart.transform_filter("datum.kind != 'total'").mark_bar(height=16).encode(
        x=x, x2="end:Q", y=y, color=colour, tooltip=tooltip)
    whiskers = chart.transform_filter("isValid(datum.lo)").mark_rule(color="#222", opacity=0.6).encode(
        x="lo:Q", x2="hi:Q", y=y, tooltip=tooltip)
    totals = chart.transform_filter("datum.kind == 'total'").mark_point(filled=True, size=160, shape="diamond").encode(
        x="end:Q", y=y, color=colour, tooltip=tooltip)
    labels = chart.mark_text(align="left", dx=6, fontSize=11, color="#333").encode(
        x=alt.X("max_x:Q"), y=y, text=alt.Text("log_odds:Q", format="+.2f")).transform_calculate(
        max_x="max(datum.end, datum.start, isValid(datum.hi) ? datum.hi : datum.end)")
    height = 26 * len(frame) + 40
    return alt.layer(bars, whiskers, totals, labels).properties(height=height, width="container")


# --- sampler diagnostics ---------------------------------------------------------------


def parameter_summary(stage2) -> pd.DataFrame:
    """Stage-2 posterior summary (mean, sd, HDI, R-hat, ESS) of the hazard's main parameters."""
    import arviz as az

    summary = az.summary(stage2, var_names=HAZARD_PARAMS, hdi_prob=0.8)
    summary.index = [_readable(name) for name in summary.index]
    return summary


def _readable(parameter: str) -> str:
    """'beta[sign_evacuation]' -> 'beta: Evacuation / embassy drawdown' (the picker's names)."""
    if parameter.startswith("beta[") and parameter.endswith("]"):
        return f"beta: {label(parameter[5:-1])}"
    return parameter


def stage1_summary(stage1) -> pd.DataFrame:
    import arviz as az

    return az.summary(stage1, var_names=STAGE1_VARS, kind="diagnostics")


def diagnostics_png(stage2, indicators: list[str], kind: str = "trace") -> bytes:
    """ArviZ trace or rank plots of alpha, sigma_theater and the chosen betas, as a PNG."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    coords = {"indicator": indicators} if indicators else None
    var_names = ["alpha", "sigma_theater"] + (["beta"] if indicators else [])
    labeller = az.labels.MapLabeller(coord_map={"indicator": {name: label(name) for name in indicators}})
    with az.rc_context({"plot.max_subplots": 60}):
        if kind == "rank":
            axes = az.plot_rank(stage2, var_names=var_names, coords=coords, kind="bars", labeller=labeller,
                                figsize=(12, 2.2 * math.ceil((2 + len(indicators)) / 3)))
        else:
            axes = az.plot_trace(stage2, var_names=var_names, coords=coords, compact=False, labeller=labeller,
                                 figsize=(12, 1.9 * (2 + len(indicators))))
    fig = np.asarray(axes).ravel()[0].figure
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
