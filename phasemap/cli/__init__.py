"""The `phasemap` command line: each command is a thin wrapper over a library function.

    phasemap run sweeps/quickstart.yaml && phasemap show results/quickstart
    phasemap --debug critical results/quickstart --metric n_distinct --axis gamma

Commands live in one module per family (sweeps, analyze, refine, bench, cluster); `main` is the console
script: every error a user can cause ends as one line and an exit code.
"""

from __future__ import annotations

import sys
import warnings

import typer
from rich.markup import escape

from phasemap.cli import analyze, bench, cluster, refine, report, sweeps  # noqa: F401 (registers the commands, in help order)
from phasemap.cli.common import STATE, app, err_console
from phasemap.spec import SpecError

__all__ = ["app", "main"]


def _user_error_code(err: Exception) -> int | None:
    """2 for bad input, 1 for a location or cluster that failed us, None for a bug."""
    from phasemap.analysis import AnalysisError
    from phasemap.executor import ClusterConnectError, ResourceError
    from phasemap.jobs import ClusterError
    from phasemap.store import StoreError
    from phasemap.summary import ResultsError

    if isinstance(err, (SpecError, AnalysisError, ResultsError, ResourceError)):
        return 2
    if isinstance(err, (StoreError, ClusterError, ClusterConnectError, OSError)):
        return 1
    return None


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """phasemap's own warnings (a damaged file skipped, ...) as one line on stderr."""
    if category.__module__.startswith("phasemap"):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    """The console script: every error a user can cause is one line and an exit code, never a
    traceback (`phasemap --debug ...` shows it)."""
    warnings.showwarning = _show_warning
    try:
        code = app(args=argv, standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[bold red]error:[/] interrupted", highlight=False)
        code = 130
    except Exception as err:                  # noqa: BLE001 - the last line of defence
        if hasattr(err, "show") and hasattr(err, "exit_code"):   # usage: click's (or typer's own click's)
            err.show()
            code = err.exit_code
        elif STATE["debug"]:
            raise
        else:
            code = _user_error_code(err)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if code is None:
                code = 1
                reason = (f"internal error: {type(err).__name__}: {reason} (a bug in phasemap: please report "
                          "it; `phasemap --debug ...` shows the traceback)")
            err_console.print(f"[bold red]error:[/] {escape(reason)}", highlight=False, soft_wrap=True)
    sys.exit(code or 0)
