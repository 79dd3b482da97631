"""Prior profiles: analyst statements in the analyst's terms → PyMC priors.

A profile (models/priors/<name>.toml) states
- base_rate: P(a build-up with no special signs escalates within 90 days), with an 80% range;
- indicators.<name>: a likelihood ratio ("seeing this makes escalation N times
  more likely") with an 80% range;
- theater_spread: the odds ratio by which a theater may differ from the
  reference class (90% prior bound);
- reading (optional): how sign and unit-move reports become covariates
  (`forecast.features.Reading`): the lead time of each sign category in weeks,
  the weight of a report by its credibility grade, one report per category and
  week or every report, and whether the baseline hazard depends on the time since
  the build-up began. Without it, the original reading.
Each statement becomes a `pymc_extras.prior.Prior` (which both builds the PyMC
variable and serialises) by one solver, `normal_with_mass` / `halfnormal_below`:
the maximum-entropy distribution holding the stated mass in the stated range, in
closed form (a one-dimensional root; PreliZ's `maxent` finds the same
distribution by general optimisation, 30x slower: tests/test_priors.py checks the
two agree). The reweighting of stored draws (`forecast.reweight`) calls the same
`Profile.log_density`, so a prior change on the page and a refit read one prior.

The stage-1 priors (force level, source bias and noise, drift) are not the
analyst's to state; they are `STAGE1_PRIORS` below, recorded in every run's
manifest beside the profile.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from forecast import config
from forecast.features import DENSITIES, INDICATORS, KERNELS, READING, Reading
from forecast.schema import CREDIBILITY, SIGN_CATEGORIES

if TYPE_CHECKING:  # pymc_extras imports PyMC: only the commands that build a model pay for it
    from pymc_extras.prior import Prior

BASE_RATE_DAYS = 90
RANGE_MASS = 0.8  # a stated range holds 80% of the prior
SPREAD_MASS = 0.9
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A profile written before the time-since-start term states no prior for it; it reads as this
# neutral statement (the term is 0 unless the profile's reading turns it on).
UNSTATED = {"crisis_age": {"value": 1.0, "range": [0.7, 1.4], "unit": "per doubling of (1 + weeks since the build-up began)",
                           "rationale": "Not stated in this profile (written before the term existed): neutral."}}

@functools.lru_cache(maxsize=1)
def _stage1_priors() -> dict:
    """Stage 1 (forecast.model): a theater's initial log force level, and the pooled source terms."""
    from pymc_extras.prior import Prior

    return {
        # wide: from a few hundred to millions of troops
        "level_start": Prior("Normal", mu=math.log(50_000), sigma=2.0),
        "bias": Prior("ZeroSumNormal", sigma=0.5, dims="source_type"),
        # 90% of the prior in [0.21, 0.57] log units: published figures are rounded ("about
        # 100,000"), so no source type is more precise than ~20%; near-zero noise is a funnel.
        "noise": Prior("LogNormal", mu=math.log(0.35), sigma=0.3, dims="source_type"),
        "drift": Prior("HalfNormal", sigma=0.2),  # sd of the weekly change in log level
    }


def __getattr__(name: str):
    """`STAGE1_PRIORS`, built on first use (it needs pymc_extras, hence PyMC)."""
    if name == "STAGE1_PRIORS":
        return _stage1_priors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Stated:
    """One analyst statement: a central value, an 80% range and a why."""

    value: float
    low: float
    high: float
    rationale: str
    unit: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    base_rate: Stated
    theater_spread: Stated  # value = odds ratio at the 90% bound; low/high unused
    indicators: dict[str, Stated]
    text: str  # the TOML as written, for hashing and saving
    reading: Reading = READING

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    # --- analyst terms → model scale -------------------------------------------------

    def alpha_prior(self) -> Prior:
        """Daily baseline log-odds, from the 90-day base rate."""
        return normal_with_mass(daily_logit(self.base_rate.value), daily_logit(self.base_rate.low),
                                daily_logit(self.base_rate.high))

    def beta_prior(self, indicator: str) -> Prior:
        s = self.indicators[indicator]
        return normal_with_mass(math.log(s.value), math.log(s.low), math.log(s.high))

    def beta_priors(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) vectors in INDICATORS order."""
        priors = [self.beta_prior(name) for name in INDICATORS]
        return (np.array([p.parameters["mu"] for p in priors]), np.array([p.parameters["sigma"] for p in priors]))

    def spread_prior(self) -> Prior:
        return halfnormal_below(math.log(self.theater_spread.value))

    def log_density(self, alpha, beta, sigma_theater) -> np.ndarray:
        """Log prior density of hazard parameters per draw (for importance reweighting)."""
        a = self.alpha_prior().parameters
        mu, sd = self.beta_priors()
        s = self.spread_prior().parameters["sigma"]
        from scipy import stats

        return (stats.norm.logpdf(alpha, a["mu"], a["sigma"])
                + stats.norm.logpdf(beta, mu, sd).sum(axis=-1)
                + stats.halfnorm.logpdf(sigma_theater, scale=s))

    def with_reading(self, reading: Reading, name: str | None = None) -> "Profile":
        """A copy that reads the evidence by `reading` (a selection candidate); text and hash follow."""
        return self._rerendered(name=name or self.name, reading=reading)

    def with_values(self, base_rate: Stated | None = None, indicators: dict[str, Stated] | None = None,
                    name: str | None = None) -> "Profile":
        """A changed copy (dashboard edits); its text is re-rendered so the hash follows."""
        return self._rerendered(name=name or self.name, base_rate=base_rate or self.base_rate,
                                indicators={**self.indicators, **(indicators or {})})

    def _rerendered(self, **changes) -> "Profile":
        changed = dataclasses.replace(self, text="", **changes)
        return dataclasses.replace(changed, text=render(changed))


def daily_logit(p90: float) -> float:
    """Constant daily hazard h with 1-(1-h)^90 = p90, on the log-odds scale."""
    h = 1 - (1 - p90) ** (1 / BASE_RATE_DAYS)
    return math.log(h / (1 - h))


@functools.lru_cache(maxsize=4096)
def normal_with_mass(centre: float, low: float, high: float, mass: float = RANGE_MASS) -> Prior:
    """The maximum-entropy Normal centred on `centre` with `mass` of its probability in [low, high].

    The mass in the range falls monotonically as the sd grows, so the largest-sd (maximum
    entropy) Normal that still holds `mass` is the one root of mass(sd) = `mass`. It exists
    whenever low < centre < high (profiles are validated so).
    """
    from scipy import optimize, stats

    def excess(sd: float) -> float:
        return stats.norm.cdf((high - centre) / sd) - stats.norm.cdf((low - centre) / sd) - mass

    from pymc_extras.prior import Prior

    sigma = optimize.brentq(excess, 1e-9 * (high - low), 1e3 * (high - low), xtol=1e-14, rtol=1e-13)
    return Prior("Normal", mu=float(centre), sigma=float(sigma))


@functools.lru_cache(maxsize=64)
def halfnormal_below(bound: float, mass: float = SPREAD_MASS) -> Prior:
    """The HalfNormal with `mass` of its probability below `bound`: sigma = bound / Phi^-1((1 + mass) / 2)."""
    from pymc_extras.prior import Prior
    from scipy import stats

    return Prior("HalfNormal", sigma=float(bound / stats.norm.ppf((1 + mass) / 2)))


# --- reading and writing profiles -----------------------------------------------------

_TOP_KEYS = {"name", "description", "base_rate", "theater_spread", "indicators", "reading"}
_READING_KEYS = {"kernel", "lead_weeks", "lead_scale", "density", "credibility", "indicators", "crisis_age",
                 "rationale"}
_STATED_KEYS = {"value", "range", "rationale", "unit"}


def path_of(name: str) -> Path:
    return config.priors_dir() / f"{name}.toml"


def load(name_or_path: str | Path = "default") -> Profile:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        if not NAME_PATTERN.match(str(name_or_path)):
            raise ProfileError(f"{name_or_path!r}: not a profile name (lower-case letters, digits, - and _)")
        path = path_of(str(name_or_path))
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in config.priors_dir().glob("*.toml")))
        what = "is not a file" if path.exists() else "no such prior profile"
        raise ProfileError(f"{path}: {what} (known: {known})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProfileError(f"{path}: not valid UTF-8 (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ProfileError(f"{path}: cannot be read ({err.strerror or err})") from None
    return parse(text, str(path))


def parse(text: str, where: str = "<profile>") -> Profile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{where}: not valid TOML: {err}") from None
    _no_unknown(doc, _TOP_KEYS, where)
    for key in ("name", "base_rate", "theater_spread", "indicators"):
        if key not in doc:
            raise ProfileError(f"{where}: missing key {key!r}")
    base = _stated(doc["base_rate"], f"{where}: base_rate", probability=True)
    spread_doc = doc["theater_spread"]
    _no_unknown(spread_doc, {"value", "rationale"}, f"{where}: theater_spread")
    spread_value = spread_doc.get("value")
    if not _finite(spread_value) or spread_value <= 1:
        raise ProfileError(f"{where}: theater_spread.value must be an odds ratio above 1")
    spread = Stated(float(spread_value), 1.0, float(spread_value), str(spread_doc.get("rationale", "")))
    _no_unknown(doc["indicators"], set(INDICATORS), f"{where}: indicators")
    missing = [name for name in INDICATORS if name not in doc["indicators"] and name not in UNSTATED]
    if missing:
        raise ProfileError(f"{where}: indicators missing: {', '.join(missing)}")
    stated = {**UNSTATED, **doc["indicators"]}
    indicators = {name: _stated(stated[name], f"{where}: indicators.{name}") for name in INDICATORS}
    name = doc["name"]
    if not isinstance(name, str) or not 0 < len(name) <= 64 or "`" in name or not name.isprintable():
        raise ProfileError(f"{where}: name must be 1 to 64 printable characters without a backtick")
    reading = reading_of(doc["reading"], f"{where}: reading") if "reading" in doc else READING
    return Profile(name, str(doc.get("description", "")), base, spread, indicators, text, reading)


def reading_of(doc, where: str) -> Reading:
    """The `[reading]` table: every value checked, the message naming its key."""
    _no_unknown(doc, _READING_KEYS, where)
    kernel, density = doc.get("kernel", READING.kernel), doc.get("density", READING.density)
    if kernel not in KERNELS:
        raise ProfileError(f"{where}.kernel: {kernel!r} is not one of {', '.join(KERNELS)}")
    if density not in DENSITIES:
        raise ProfileError(f"{where}.density: {density!r} is not one of {', '.join(DENSITIES)}")
    lead = _numbers(doc.get("lead_weeks", {}), SIGN_CATEGORIES, f"{where}.lead_weeks", low=0, high=52)
    if kernel == "lead" and set(lead) != set(SIGN_CATEGORIES):
        raise ProfileError(f"{where}.lead_weeks: kernel \"lead\" needs the lead time of every sign category "
                           f"({', '.join(SIGN_CATEGORIES)})")
    credibility = _numbers(doc.get("credibility", {}), CREDIBILITY, f"{where}.credibility", low=0, high=1)
    if credibility and set(credibility) != set(CREDIBILITY):
        raise ProfileError(f"{where}.credibility: give a weight for every grade ({', '.join(CREDIBILITY)})")
    scale = doc.get("lead_scale", 1.0)
    if not _finite(scale) or not 0 < scale <= 10:
        raise ProfileError(f"{where}.lead_scale: must be a number in (0, 10]")
    switches = {key: doc.get(key, getattr(READING, key)) for key in ("indicators", "crisis_age")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise ProfileError(f"{where}.{key}: must be true or false")
    return Reading(kernel, tuple(lead.items()), float(scale), density, tuple(credibility.items()),
                   rationale=str(doc.get("rationale", "")), **switches)


def _numbers(doc, keys, where: str, low: float, high: float) -> dict[str, float]:
    _no_unknown(doc, set(keys), where)
    for key, value in doc.items():
        if not _finite(value) or not low <= value <= high:
            raise ProfileError(f"{where}.{key}: must be a number in [{low:g}, {high:g}]")
    return {key: float(doc[key]) for key in keys if key in doc}


def _finite(x) -> bool:
    """A real number: not a bool (TOML true), not inf or nan."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _no_unknown(doc, allowed: set[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a table")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _stated(doc, where: str, probability: bool = False) -> Stated:
    _no_unknown(doc, _STATED_KEYS, where)
    value, rng = doc.get("value"), doc.get("range")
    if not _finite(value) or not (isinstance(rng, list) and len(rng) == 2 and all(_finite(x) for x in rng)):
        raise ProfileError(f"{where}: needs value = number and range = [low, high] (finite numbers)")
    low, high = float(rng[0]), float(rng[1])
    if low > high:
        raise ProfileError(f"{where}: range is inverted ({low} > {high})")
    if low == high:
        raise ProfileError(f"{where}: range has no width; give low < high")
    if low <= 0 or (probability and high >= 1):
        raise ProfileError(f"{where}: range must lie in {'(0, 1)' if probability else '(0, inf)'}")
    if not low < value < high:
        raise ProfileError(f"{where}: value {value} is not inside its range [{low}, {high}] "
                           f"(the range must hold {RANGE_MASS:.0%} of the prior around the value)")
    return Stated(float(value), low, high, str(doc.get("rationale", "")), str(doc.get("unit", "")))


def render(profile: Profile) -> str:
    """The profile as TOML, in the file layout (used by 'Save as profile')."""
    def stated(s: Stated) -> str:
        lines = [f"value = {s.value:g}", f"range = [{s.low:g}, {s.high:g}]"]
        if s.unit:
            lines.append(f"unit = {_q(s.unit)}")
        lines.append(f"rationale = {_q(s.rationale)}")
        return "\n".join(lines)

    parts = [f"name = {_q(profile.name)}", f"description = {_q(profile.description)}", "",
             "[base_rate]", stated(profile.base_rate), "",
             "[theater_spread]", f"value = {profile.theater_spread.value:g}",
             f"rationale = {_q(profile.theater_spread.rationale)}"]
    for name in INDICATORS:
        parts += ["", f"[indicators.{name}]", stated(profile.indicators[name])]
    return "\n".join(parts + _render_reading(profile.reading)) + "\n"


def _render_reading(r: Reading) -> list[str]:
    if r == READING:
        return []
    parts = ["", "[reading]", f"kernel = {_q(r.kernel)}", f"density = {_q(r.density)}",
             f"lead_scale = {r.lead_scale:g}", f"indicators = {str(r.indicators).lower()}",
             f"crisis_age = {str(r.crisis_age).lower()}", f"rationale = {_q(r.rationale)}"]
    for table, pairs in (("lead_weeks", r.lead_weeks), ("credibility", r.credibility)):
        if pairs:
            parts += ["", f"[reading.{table}]"] + [f"{k} = {v:g}" for k, v in pairs]
    return parts


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def save(profile: Profile, overwrite: bool = False) -> Path:
    """Write a profile atomically; never overwrites `default` and never overwrites silently."""
    if not NAME_PATTERN.match(profile.name):
        raise ProfileError(f"{profile.name!r}: a profile name is lower-case letters, digits, - and _")
    if profile.name == "default":
        raise ProfileError("the default profile is not overwritten; choose another name")
    path = path_of(profile.name)
    if path.exists() and not overwrite:
        raise ProfileError(f"{path} exists; choose another name or confirm overwrite")
    text = render(profile)
    parse(text, str(path))  # never write a profile that would not load
    from forecast import safe_write

    return safe_write.write_text(path, text)  # atomic; refuses to replace a folder, link or device
