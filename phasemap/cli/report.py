"""`phasemap report`: one self-contained HTML page per study.

    phasemap report results/quickstart -o quickstart.html
    phasemap report results/linear-rank results/scalar-noise -o validation.html --title "Validation"
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from phasemap.cli.common import app, console, fail


@app.command()
def report(
    results: list[str] = typer.Argument(..., help="Results folders or URIs (one section each)."),
    out: Path = typer.Option(..., "-o", "--out", help="The HTML file to write."),
    metric: Optional[str] = typer.Option(None, "--metric", help="The metric of the phase diagram and the scaling fit "
                                         "(default: weight_rank for linear students, n_dos for transformers, else n_distinct)."),
    title: Optional[str] = typer.Option(None, "--title", help="The page's title (default: the sweeps' names)."),
) -> None:
    """Write one HTML page (figures inline, no network reference) for a results folder: the study,
    phase diagram and critical points, scaling fit, dynamics, refinement, and every bad run."""
    from phasemap.analysis import AnalysisError
    from phasemap.report import report as build
    from phasemap.summary import ResultsError

    if out.suffix.lower() not in (".html", ".htm"):
        fail(f"-o {out}: the report is an HTML file (end it in .html)")
    try:
        page = build(results, metric, title)
    except (ResultsError, AnalysisError) as err:
        fail(str(err))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    console.print(f"wrote {out} ({len(page.encode()) / 1e6:.1f} MB)", highlight=False)
