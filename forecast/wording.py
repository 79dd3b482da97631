"""How a forecast is said: estimative words, probabilities as an analyst reads them, the key judgment.

Kept apart from `forecast.predict` (which needs the model stack) so that every command that only
shows a stored forecast — `show`, `runs`, reports, the page — can say it without importing PyMC.
"""

from __future__ import annotations

WORDS = [  # standard estimative language: upper bound of each band
    (0.05, "almost no chance"), (0.20, "very unlikely"), (0.45, "unlikely"), (0.55, "roughly even"),
    (0.80, "likely"), (0.95, "very likely"), (1.01, "almost certain"),
]


def words(p: float) -> str:
    return next(word for bound, word in WORDS if p < bound)


def pct(p: float | None) -> str:
    """A probability as an analyst reads it: 31%, 0.4%, < 0.1%, > 99% (never a rounded 0% or 100%)."""
    if p is None:
        return "—"
    if p >= 0.995:
        return "> 99%"
    if p < 0.001:
        return "< 0.1%"
    if p < 0.01:
        return f"{p:.1%}"
    return f"{p:.0%}"


def span(lo: float | None, hi: float | None) -> str:
    """An interval as an analyst reads it: "14–62%", or "29% to > 99%" when an end is open."""
    a, b = pct(lo), pct(hi)
    if a[0] in "<>" or b[0] in "<>":
        return f"{a} to {b}"
    return f"{a.removesuffix('%')}–{b}" if a.endswith("%") and b.endswith("%") else f"{a}–{b}"


INTERVAL_MEANING = ("The 80% interval is the spread of the probability over the model's uncertainty about its "
                    "own parameters (10th to 90th percentile across posterior draws): how sure the model is of "
                    "the number, not a second forecast. The number itself is the posterior mean.")


def key_judgment(forecast: dict) -> str:
    """The one-sentence judgment: words, numbers, most likely window."""
    p = forecast["prob"]["30"]
    t = forecast["timing"]
    text = (f"{forecast['words'].capitalize()} ({pct(p['mean'])}, 80% interval {span(p['lo'], p['hi'])}) "
            f"to escalate within 30 days of {forecast['as_of']}")
    if t["median"]:
        text += (f"; if it comes within {t['horizon_days']} days, most likely between {t['p10']} and {t['p90']} "
                 f"(median {t['median']})")
    return text + "."
