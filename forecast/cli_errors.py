"""The command line's top-level error handler: what an operator can act on becomes one line and an exit code.

Bad input (a profile, a retraction, a dataset request, an unsafe output path, undecodable text) exits 2;
an unusable environment (the store, settings, folders, run files) exits 1. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import click
import sqlalchemy as sa
import typer
from typer.core import TyperGroup

from forecast import config, dataset, executor, priors, runs, safe_write, schedule, store


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _classify(err: Exception) -> tuple[int, str] | None:
    """(exit code, one line) for an error the operator can act on; None: a bug, keep its traceback."""
    if isinstance(err, (store.RetractError, priors.ProfileError, dataset.DatasetError, safe_write.UnsafeTarget)):
        return 2, str(err)
    if isinstance(err, UnicodeDecodeError):
        return 2, f"input is not valid UTF-8 (byte {err.start}): save it as UTF-8"
    if isinstance(err, (store.StoreError, config.SettingsError, schedule.SettingError, runs.RunError,
                        executor.ExecutorError)):
        return 1, str(err)
    if isinstance(err, sa.exc.SQLAlchemyError):
        busy = "; another command holds the store: try again" if "locked" in _first_line(err) else ""
        return 1, (f"the evidence store {store.shown(config.db_url())} cannot be used "
                   f"({type(getattr(err, 'orig', None) or err).__name__}): {_first_line(err)}{busy}")
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return 1, f"{where}{err.strerror or _first_line(err)}"
    return None


class ErrorHandlingGroup(TyperGroup):
    """The top-level error handler: store, I/O and settings errors become one stderr line and an exit code."""

    def invoke(self, ctx):
        config.reset_warnings()  # each command reports what it meets (tests run many in one process)
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:  # noqa: BLE001 - classified below; anything else keeps its traceback
            verdict = _classify(err)
            if verdict is None:
                raise
            code, message = verdict
            typer.echo(f"error: {message}".encode("utf-8", "backslashreplace").decode("utf-8"), err=True)
            raise typer.Exit(code) from None
