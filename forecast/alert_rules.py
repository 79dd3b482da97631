"""The alerts file (``alerts.toml``): rules per theater and the webhook, validated strictly.

``$FORECAST_RUNS_DIR/alerts.toml``, or the file FORECAST_ALERTS names (then it must exist)::

    [theaters.watch-ukraine]
    p30_above = 0.5          # P(30 days) crosses 50% upward (a list gives several levels: [0.3, 0.5])
    p30_below = 0.2          # ... falls below 20%
    p30_move  = 0.10         # ... moves by more than 10 points (either way) between two published runs

    [theaters."*"]           # every theater without a table of its own
    p30_move = 0.15

    [webhook]
    url = "https://hooks.example.org/forecast"
    timeout_seconds = 5      # per attempt (default 5)
    retries = 2              # further attempts after a failed one (default 2: 3 attempts in all)
    backoff_seconds = 0.5    # wait before retry n: backoff * 2**(n-1) (default 0.5)

A theater's own table replaces the ``"*"`` table (an empty one turns its alerts off). Unknown keys,
wrong types, non-finite or out-of-range numbers and a URL that is not http(s) with a host raise
`AlertConfigError` naming the file and the key (the CLI exits 2). `forecast.alerts` uses these
rules; what they mean is in its docstring.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from forecast import config

CONFIG_ENV = "FORECAST_ALERTS"
CONFIG_NAME = "alerts.toml"
DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_BACKOFF = 5.0, 2, 0.5
RULES = ("p30_above", "p30_below", "p30_move")


class AlertConfigError(ValueError):
    """An unusable alerts file; the message names the file and the key."""


@dataclass(frozen=True)
class Rules:
    """One theater's thresholds (probabilities)."""

    above: tuple[float, ...] = ()
    below: tuple[float, ...] = ()
    move: float | None = None

    @property
    def empty(self) -> bool:
        return not (self.above or self.below or self.move is not None)


@dataclass(frozen=True)
class Webhook:
    url: str = field(repr=False)  # often carries a secret token: never printed
    timeout_seconds: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff_seconds: float = DEFAULT_BACKOFF

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def shown(self) -> str:
        """Scheme, host and port only: the path and query often carry a secret token."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Config:
    path: Path
    exists: bool = False
    theaters: dict[str, Rules] = field(default_factory=dict)
    default: Rules | None = None
    webhook: Webhook | None = None

    def rules_for(self, theater: str) -> Rules:
        return self.theaters.get(theater, self.default or Rules())


def config_path() -> Path:
    raw = os.environ.get(CONFIG_ENV, "").strip()
    return Path(raw) if raw else config.runs_dir() / CONFIG_NAME


def load(path: Path | None = None) -> Config:
    """The rules file; no file at the default place means no rules. Raises AlertConfigError."""
    explicit = path is not None or bool(os.environ.get(CONFIG_ENV, "").strip())
    path = Path(path) if path is not None else config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise AlertConfigError(f"{path}: no such alerts file ({CONFIG_ENV} names it)") from None
        return Config(path)
    except OSError as err:
        raise AlertConfigError(f"{path}: cannot read the alerts file ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AlertConfigError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    return parse(text, path)


def parse(text: str, path: Path | str = CONFIG_NAME) -> Config:
    """Validate an alerts file strictly: unknown keys, wrong types, non-finite or out-of-range numbers."""
    where = str(path)

    def bad(key: str, problem: str) -> AlertConfigError:
        return AlertConfigError(f"{where}: {key}: {problem}")

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise AlertConfigError(f"{where}: not valid TOML: {err}") from None
    _known(doc, ("theaters", "webhook"), "", bad)
    theaters, default = {}, None
    tables = doc.get("theaters", {})
    if not isinstance(tables, dict):
        raise bad("theaters", "expected a table of theaters ([theaters.THEATER-ID])")
    for theater, table in tables.items():
        key = f"theaters.{_toml_key(theater)}"
        if theater != "*" and not _slug(theater):
            raise bad(key, "not a theater id (lower-case letters, digits and '-')")
        if not isinstance(table, dict):
            raise bad(key, "expected a table (p30_above, p30_below, p30_move)")
        _known(table, RULES, key + ".", bad)
        rules = Rules(above=_levels(table, "p30_above", key, bad), below=_levels(table, "p30_below", key, bad),
                      move=_probability(table["p30_move"], f"{key}.p30_move", bad) if "p30_move" in table else None)
        if theater == "*":
            default = rules
        else:
            theaters[theater] = rules
    webhook = None
    if "webhook" in doc:
        table = doc["webhook"]
        if not isinstance(table, dict):
            raise bad("webhook", "expected a table ([webhook] url = ...)")
        _known(table, ("url", "timeout_seconds", "retries", "backoff_seconds"), "webhook.", bad)
        if "url" not in table:
            raise bad("webhook.url", "missing (the address alerts are POSTed to)")
        webhook = Webhook(url=_url(table["url"], bad),
                          timeout_seconds=_number(table, "timeout_seconds", DEFAULT_TIMEOUT, 0.1, 120, bad),
                          retries=_whole(table, "retries", DEFAULT_RETRIES, 0, 10, bad),
                          backoff_seconds=_number(table, "backoff_seconds", DEFAULT_BACKOFF, 0, 60, bad))
    return Config(Path(path), True, theaters, default, webhook)


def _known(table: dict, allowed: tuple[str, ...], prefix: str, bad) -> None:
    for key in table:
        if key not in allowed:
            raise bad(f"{prefix}{_toml_key(key)}", f"unknown key; expected one of {', '.join(allowed)}")


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def _slug(text: str) -> bool:
    return 0 < len(text) <= 80 and text[0].isascii() and (text[0].islower() or text[0].isdigit()) \
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in text)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _probability(value, key: str, bad) -> float:
    if not _is_number(value):
        raise bad(key, f"expected a probability (a number between 0 and 1, e.g. 0.5), not {value!r}")
    if not math.isfinite(value) or not 0 < value < 1:
        raise bad(key, f"{value!r} is not a probability strictly between 0 and 1 (0.5 means 50%)")
    return float(value)


def _levels(table: dict, name: str, key: str, bad) -> tuple[float, ...]:
    if name not in table:
        return ()
    value = table[name]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise bad(f"{key}.{name}", "an empty list; give a probability or a list of them")
    levels = tuple(_probability(v, f"{key}.{name}", bad) for v in items)
    if len(set(levels)) != len(levels):
        raise bad(f"{key}.{name}", "a level is listed twice")
    return tuple(sorted(levels))


def _number(table: dict, name: str, default: float, low: float, high: float, bad) -> float:
    value = table.get(name, default)
    if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
        raise bad(f"webhook.{name}", f"{value!r} is not a number of seconds from {low:g} to {high:g}")
    return float(value)


def _whole(table: dict, name: str, default: int, low: int, high: int, bad) -> int:
    value = table.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"webhook.{name}", f"{value!r} is not a whole number from {low} to {high}")
    return value


def _url(value, bad) -> str:
    if not isinstance(value, str):
        raise bad("webhook.url", f"expected a URL in quotes, not {value!r}")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https"):
        raise bad("webhook.url", f"scheme {parts.scheme or '(none)'!r} is not http or https")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise bad("webhook.url", "the port is not a number from 0 to 65535") from None
    if not parts.hostname or not value.strip().isprintable() or " " in value.strip():
        raise bad("webhook.url", "not a URL with a host (e.g. https://hooks.example.org/forecast)")
    return value.strip()
