"""What every command shares: the Typer app, the consoles, and one-line failures.

Rich output on a terminal; piped into a file or another program, plain full-length lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from phasemap.grid import DEFAULT_MAX_CONFIGS
from phasemap.spec import SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Phase diagrams of parameter-symmetry breaking and restoration.")
DEVICES = ("auto", "cpu", "cuda")


def _console(stderr: bool) -> Console:
    """Rich output on a terminal; piped into a file or a program, plain full-length lines (no
    wrapping, no ellipses, no colour)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=100_000, soft_wrap=True, no_color=True, highlight=False)


err_console = _console(stderr=True)
console = _console(stderr=False)
STATE = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an error.")) -> None:
    STATE["debug"] = debug


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def spec_fail(spec: Path, err: SpecError) -> NoReturn:
    """A sweep-file error, led by the file's name (grid errors are found after loading)."""
    text = str(err)
    fail(text if text.startswith(str(spec)) else f"{spec}: {text}")


def check_device(device: str, choices: tuple[str, ...] = DEVICES, local: bool = True) -> None:
    """Refuse an unknown device, and cuda where torch sees no GPU (only if the run is local)."""
    if device not in choices:
        fail(f"--device: {device!r} is not one of {', '.join(choices)}")
    if device == "cuda" and local:
        import torch
        if not torch.cuda.is_available():
            fail("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU); "
                 "see the README's GPU note")


MAX_CONFIGS_OPTION = typer.Option(DEFAULT_MAX_CONFIGS, "--max-configs", min=1,
                                  help="Refuse a sweep with more configs than this (a guard against typos in the grid).")


def analysis_call(fn, *args, **kwargs):
    from phasemap.analysis import AnalysisError
    from phasemap.summary import ResultsError

    try:
        return fn(*args, **kwargs)
    except (AnalysisError, ResultsError) as err:
        fail(str(err))
