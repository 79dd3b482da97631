"""Prior profiles (forecast.priors): analyst statements → PyMC priors, and bad profiles refused."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from pymc_extras.prior import Prior
from scipy import stats
from scipy.special import expit

from forecast import priors
from forecast.features import INDICATORS
from forecast.priors import ProfileError

DEFAULT_TEXT = (priors.config.home() / "models" / "priors" / "default.toml").read_text(encoding="utf-8")


@pytest.fixture
def priors_dir(tmp_path, monkeypatch):
    """A private priors folder holding a copy of the default profile."""
    folder = tmp_path / "priors"
    folder.mkdir()
    shutil.copy(priors.config.home() / "models" / "priors" / "default.toml", folder / "default.toml")
    monkeypatch.setenv("FORECAST_PRIORS_DIR", str(folder))
    return folder


def _mass(prior: Prior, low: float, high: float) -> float:
    p = prior.parameters
    return stats.norm.cdf(high, p["mu"], p["sigma"]) - stats.norm.cdf(low, p["mu"], p["sigma"])


def test_default_profile_loads_with_every_indicator_and_a_rationale():
    profile = priors.load("default")
    assert profile.name == "default"
    assert list(profile.indicators) == INDICATORS
    for stated in [profile.base_rate, profile.theater_spread, *profile.indicators.values()]:
        assert stated.rationale.strip()
    assert len(profile.hash) == 16 and profile.hash == priors.parse(profile.text).hash


def test_alpha_prior_matches_the_base_rate():
    """At the prior mean of alpha, a quiet build-up escalates within 90 days with the stated probability."""
    profile = priors.load("default")
    alpha = profile.alpha_prior()
    assert isinstance(alpha, Prior) and alpha.distribution == "Normal"
    p90 = 1 - (1 - expit(alpha.parameters["mu"])) ** priors.BASE_RATE_DAYS
    assert p90 == pytest.approx(profile.base_rate.value, abs=1e-9)
    assert p90 == pytest.approx(0.15, abs=1e-9)


def test_stated_ranges_hold_80_percent_of_each_prior():
    profile = priors.load("default")
    b = profile.base_rate
    assert _mass(profile.alpha_prior(), priors.daily_logit(b.low), priors.daily_logit(b.high)) \
        == pytest.approx(priors.RANGE_MASS, abs=0.01)
    for name in INDICATORS:
        s = profile.indicators[name]
        beta = profile.beta_prior(name)
        assert beta.parameters["mu"] == pytest.approx(math.log(s.value)), name
        assert _mass(beta, math.log(s.low), math.log(s.high)) == pytest.approx(0.8, abs=0.01), name
    mu, sigma = profile.beta_priors()
    assert mu.shape == sigma.shape == (len(INDICATORS),) and (sigma > 0).all()


def test_theater_spread_bounds_90_percent_of_the_halfnormal():
    profile = priors.load("default")
    spread = profile.spread_prior()
    assert spread.distribution == "HalfNormal"
    bound = math.log(profile.theater_spread.value)
    assert stats.halfnorm.cdf(bound, scale=spread.parameters["sigma"]) == pytest.approx(0.9, abs=0.01)


def test_log_density_is_finite_and_matches_scipy():
    profile = priors.load("default")
    rng = np.random.default_rng(0)
    a = profile.alpha_prior().parameters
    mu, sd = profile.beta_priors()
    s = profile.spread_prior().parameters["sigma"]
    alpha = rng.normal(a["mu"], a["sigma"], 50)
    beta = rng.normal(mu, sd, (50, len(INDICATORS)))
    sigma = np.abs(rng.normal(0, s, 50))
    logp = profile.log_density(alpha, beta, sigma)
    assert logp.shape == (50,) and np.isfinite(logp).all()
    expected = (stats.norm.logpdf(alpha, a["mu"], a["sigma"]) + stats.norm.logpdf(beta, mu, sd).sum(axis=1)
                + stats.halfnorm.logpdf(sigma, scale=s))
    assert np.allclose(logp, expected)


# --- bad profiles ------------------------------------------------------------------------


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in DEFAULT_TEXT, old
    return DEFAULT_TEXT.replace(old, new, count)


def _sign_medical(text: str) -> str:
    """The default text with the sign_medical block's range line replaced."""
    block = DEFAULT_TEXT.split("[indicators.sign_medical]")[1].split("[indicators.")[0]
    return DEFAULT_TEXT.replace(block, block.replace("range = [1.2, 8]", text))


@pytest.mark.parametrize("text, named, reason", [
    (_edit('name = "default"', 'name = "default"\ncolour = "red"'), "colour", "unknown key"),
    (_edit("[indicators.overstay]", "[indicators.overstays]\nvalue = 2\nrange = [1, 5]\n\n[indicators.overstay]"),
     "overstays", "unknown key"),
    (_edit("[base_rate]\nvalue = 0.15", "[base_rate]\nvalue = 0.15\nconfidence = 0.9"), "confidence", "unknown key"),
    (_sign_medical("range = [8, 1.2]"), "indicators.sign_medical", "inverted"),
    (_sign_medical("range = [3, 3]"), "indicators.sign_medical", "no width"),
    (_sign_medical("range = [4, 8]"), "indicators.sign_medical", "not inside its range"),
    (_sign_medical("range = [0, 8]"), "indicators.sign_medical", "must lie in"),
    (_edit("range = [0.04, 0.4]", "range = [0.04, 1.2]"), "base_rate", "must lie in"),
    (_edit("range = [0.04, 0.4]", "range = [0.2, 0.4]"), "base_rate", "not inside its range"),
    (_edit("[theater_spread]\nvalue = 3", "[theater_spread]\nvalue = 0.5"), "theater_spread", "odds ratio above 1"),
    (DEFAULT_TEXT.split("[indicators.claim_verified]")[0], "claim_verified", "missing"),
    ("name = 'x'\n[base_rate\n", "not valid TOML", "TOML"),
    (DEFAULT_TEXT + '\n[reading]\nkernel = "sideways"\n', "reading.kernel", "not one of"),
    (DEFAULT_TEXT + '\n[reading]\nkernel = "lead"\n[reading.lead_weeks]\nmedical = 4\n', "reading.lead_weeks",
     "every sign category"),
    (DEFAULT_TEXT + '\n[reading.credibility]\nconfirmed = 1\n', "reading.credibility", "every grade"),
    (DEFAULT_TEXT + '\n[reading.credibility]\nrumour = 1\n', "reading.credibility", "unknown key"),
    (DEFAULT_TEXT + '\n[reading]\nindicators = "no"\n', "reading.indicators", "true or false"),
    (DEFAULT_TEXT + '\n[reading]\ncrisis_age = 1\n', "reading.crisis_age", "true or false"),
])
def test_bad_profiles_are_refused_with_the_key_named(text, named, reason):
    with pytest.raises(ProfileError) as err:
        priors.parse(text, "hawkish.toml")
    message = str(err.value)
    assert "hawkish.toml" in message and named in message and reason in message, message


def test_unknown_profile_name_lists_the_known_ones(priors_dir):
    with pytest.raises(ProfileError, match="no such prior profile.*default"):
        priors.load("hawkish")
    with pytest.raises(ProfileError, match="not a profile name"):
        priors.load("../etc/passwd")


# --- saving ------------------------------------------------------------------------------


def test_save_refuses_default_and_existing_names(priors_dir):
    profile = priors.load("default")
    with pytest.raises(ProfileError, match="default profile is not overwritten"):
        priors.save(profile)
    assert (priors_dir / "default.toml").read_text(encoding="utf-8") == DEFAULT_TEXT

    hawk = profile.with_values(base_rate=priors.Stated(0.3, 0.1, 0.6, "more pessimistic"), name="hawkish")
    path = priors.save(hawk)
    assert path == priors_dir / "hawkish.toml"
    again = priors.load("hawkish")
    assert again.base_rate == hawk.base_rate and again.indicators == hawk.indicators
    assert again.hash == hawk.hash != profile.hash

    with pytest.raises(ProfileError, match="exists"):
        priors.save(hawk.with_values(base_rate=priors.Stated(0.5, 0.2, 0.7, "even more")))
    assert priors.load("hawkish").base_rate.value == 0.3
    priors.save(hawk.with_values(base_rate=priors.Stated(0.5, 0.2, 0.7, "even more")), overwrite=True)
    assert priors.load("hawkish").base_rate.value == 0.5
    assert not list(priors_dir.glob("*.tmp"))


def test_save_refuses_a_bad_name(priors_dir):
    with pytest.raises(ProfileError, match="lower-case"):
        priors.save(priors.load("default").with_values(name="Bad Name"))


def test_render_round_trips_the_default_profile():
    profile = priors.load("default")
    again = priors.parse(priors.render(profile))
    assert again.base_rate == profile.base_rate and again.indicators == profile.indicators
    assert again.theater_spread.value == profile.theater_spread.value
    assert again.reading == priors.READING and "[reading]" not in priors.render(profile)


def test_a_reading_round_trips_and_changes_the_hash():
    from forecast import selection

    graded = next(c for c in selection.load_candidates(priors.load("default"), ["lead-graded"])
                  if c.name == "lead-graded").profile
    again = priors.parse(priors.render(graded))
    assert again.reading == graded.reading and again.reading.rationale == graded.reading.rationale
    assert again.reading.lead("bridging") == 1.5 and dict(again.reading.credibility)["denied"] == 0.2
    assert graded.hash != priors.load("default").hash
    edited = graded.with_values(name="analyst")  # a dashboard edit keeps the reading
    assert edited.reading == graded.reading and "[reading.lead_weeks]" in edited.text


def test_a_profile_from_before_the_time_since_start_term_still_loads_and_the_term_is_off():
    old = DEFAULT_TEXT.split("[indicators.crisis_age]")[0]
    profile = priors.parse(old, "old-run/profile.toml")
    assert profile.indicators["crisis_age"].value == 1 and not profile.reading.crisis_age
    assert profile.hash != priors.load("default").hash  # its text, as written, is what it hashes
    on = priors.parse(DEFAULT_TEXT + "\n[reading]\ncrisis_age = true\n")
    assert on.reading.crisis_age and on.reading.uses("crisis_age") and not priors.load("default").reading.uses("crisis_age")
    assert priors.parse(priors.render(on)).reading == on.reading


@pytest.mark.parametrize("centre, low, high", [
    (math.log(1.5), math.log(0.8), math.log(3.0)),  # an indicator of the default profile
    (math.log(0.3), math.log(0.1), math.log(0.8)),  # a protective one, off-centre
    (priors.daily_logit(0.15), priors.daily_logit(0.04), priors.daily_logit(0.4)),  # the base rate
    (0.0, -0.01, 5.0),  # the value close to one end
])
def test_closed_form_prior_is_preliz_maxent(centre, low, high):
    """The one prior solver (closed form) finds PreliZ's maximum-entropy Normal, to 1e-5 in its sd."""
    import preliz as pz

    fitted = pz.Normal()
    pz.maxent(fitted, low, high, priors.RANGE_MASS, fixed_params={"mu": centre}, plot=False)
    ours = priors.normal_with_mass(centre, low, high).parameters
    assert ours["mu"] == centre
    assert ours["sigma"] == pytest.approx(float(fitted.sigma), rel=1e-5)
    assert _mass(priors.normal_with_mass(centre, low, high), low, high) == pytest.approx(priors.RANGE_MASS, abs=1e-9)


def test_closed_form_halfnormal_is_preliz_maxent():
    import preliz as pz

    fitted = pz.HalfNormal()
    pz.maxent(fitted, 0, math.log(3), priors.SPREAD_MASS, plot=False)
    assert priors.halfnormal_below(math.log(3)).parameters["sigma"] == pytest.approx(float(fitted.sigma), rel=1e-5)


def test_stage1_priors_are_recorded_prior_objects():
    assert set(priors.STAGE1_PRIORS) == {"level_start", "bias", "noise", "drift"}
    for prior in priors.STAGE1_PRIORS.values():
        assert isinstance(prior, Prior) and Prior.from_dict(prior.to_dict()).to_dict() == prior.to_dict()
