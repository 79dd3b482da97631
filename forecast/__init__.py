"""Probabilistic escalation forecasting from force-posture evidence.

Stages, one module each, in data-flow order:
schema (evidence rows) → ingest (files → validated rows) → store (SQL) →
features (theater × day panel as of a date) → priors (analyst profile →
PyMC priors) → model (two-stage PyMC model) → runs (artifacts + gate) →
predict (forecast, timing, drivers) → backtest / report / schedule → cli.
"""

__version__ = "0.1.0"
