"""Figures: compute plain data first (`*_data`, polars frames and dicts), then draw it thinly.

    plot("results/quickstart", kind="phase", x="gamma", y="temperature", color="n_distinct",
         out="phase.png")

Kinds: `phase` (heat map over two axes colored by a metric, or by the modal symmetry class with
the seeds' agreement shown, critical points with their CIs overlaid, optional facets over a third
axis; where the runs are not a full grid, as `phasemap refine` leaves them, one marker per sampled
point instead of cells), `scaling` (log-log runs, transition points with their CIs, the fitted bound and its
bootstrap band), `width` (metric against width, one line per gamma), `loss` (train and test loss
along an axis), `trend` (runs, seed means and the least-squares line with its bootstrap band along
one axis, one color per group of the other axes, rho and the slope with their CIs), and, from the
traces of runs with train.record, `dynamics` (the paper's Fig. 2 for one run: Δ of every
norm-neighbour pair over training with its threshold, the train and test loss below, dotted lines
at the symmetry-breaking times and triangles at the loss drops of analysis.dynamics; when --run /
--where match several runs the first that `phasemap dynamics` lists is drawn and the title says
how many matched) and `trajectories` (a metric over training, n_distinct by default, or n_dos,
weight_rank, train_loss, test_loss, one thin line per recorded run colored by a varying axis).
`run` and `where` choose the runs of those two and are refused for the others. Default axes
are the swept knobs, never columns derived from them (batch_size along temperature); the default
metric is `analysis.default_metric`. Diverged and failed runs are never averaged in silently:
they are counted in the title and marked where they happened, and a value where fewer than half
of the seeds finished is not drawn. Axes whose grid spans more than a factor 10 are drawn on log
scales, and every axis ends at the data's extent.
"""

from __future__ import annotations

from pathlib import Path

from phasemap.analysis import SEED, AnalysisError, default_metric, independent_axes, source
from phasemap.plots.data import (MAX_GROUPS, TRAJECTORY_METRICS, dynamics_data, loss_data, phase_data, scaling_data,
                                 trajectories_data, trend_data, width_data)
from phasemap.plots.draw import (LABELS, cell_edges, draw_dynamics, draw_loss, draw_phase, draw_scaling,
                                 draw_trajectories, draw_trend, draw_width, label)

__all__ = ["KINDS", "LABELS", "MAX_GROUPS", "TRAJECTORY_METRICS", "cell_edges", "default_axes", "draw_dynamics",
           "draw_loss", "draw_phase", "draw_scaling", "draw_trajectories", "draw_trend", "draw_width",
           "dynamics_data", "figure", "label", "loss_data", "phase_data", "plot", "scaling_data", "trajectories_data",
           "trend_data", "width_data"]

KINDS = ("phase", "scaling", "width", "loss", "trend", "dynamics", "trajectories")
TRACED = ("dynamics", "trajectories")    # drawn from the traces of recorded runs

def default_axes(results) -> list[str]:
    """The axes a figure uses when none are given: swept knobs, gamma first, no derived columns."""
    axes = independent_axes(results)
    return sorted(axes, key=lambda a: a != "gamma")


def plot(results, kind: str, out: str | Path, x: str | None = None, y: str | None = None,
         color: str | None = None, facet: str | None = None, metric: str | None = None,
         by: list[str] | None = None, run: str | None = None, where: dict[str, object] | None = None) -> Path:
    """Compute and draw one figure; the format follows out's suffix (.png, .svg, .pdf).

    `metric` is what the figure measures (phase: the color; `color` is its alias there);
    by default `analysis.default_metric`. `by` (trend only) names the group columns, one color
    each; by default the other varying axes. `run` (a run_id or its prefix; dynamics) and `where`
    ({column: value}; dynamics, trajectories) choose recorded runs; `y` is the color axis of
    trajectories.

        plot("results/fig2", kind="dynamics", run="fbf8a57f", out="fig2.png")
    """
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise AnalysisError(f"{out}: the figure must end in .png, .svg or .pdf")
    fig = figure(results, kind, x, y, color, facet, metric, by, run, where)
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


def figure(results, kind: str, x: str | None = None, y: str | None = None, color: str | None = None,
           facet: str | None = None, metric: str | None = None, by: list[str] | None = None,
           run: str | None = None, where: dict[str, object] | None = None):
    """The matplotlib figure `plot` saves (the caller closes it)."""
    if kind not in KINDS:
        raise AnalysisError(f"unknown plot kind {kind!r}; use one of {', '.join(KINDS)}")
    if by is not None and kind != "trend":
        raise AnalysisError("--by chooses the groups of a trend plot; use it with --kind trend")
    if metric and color and metric != color:
        raise AnalysisError("give the metric once: --metric and --color name different columns")
    if (run is not None or where) and kind not in TRACED:
        raise AnalysisError("--run and --where choose recorded runs; use them with --kind dynamics or trajectories")
    if kind in TRACED:
        return _plot_traced(results, kind, x, y, metric or color, facet, run, where)
    return _plot_runs(results, kind, x, y, metric, color, facet, by)


def _plot_traced(results, kind: str, x: str | None, y: str | None, metric: str | None, facet: str | None,
                 run: str | None, where: dict[str, object] | None):
    """The figure of a kind drawn from traces, after refusing the options it does not read."""
    if facet is not None or x not in (None, "step"):
        raise AnalysisError(f"a {kind} plot is drawn along the training step; it takes no --x or --facet")
    if kind == "dynamics":
        if metric is not None or y is not None:
            raise AnalysisError("a dynamics plot always shows Δ and the loss; it takes no --metric, --color or --y")
        return draw_dynamics(dynamics_data(results, run, where))
    if run is not None:
        raise AnalysisError("--run chooses the one run of a dynamics plot; a trajectories plot draws every "
                            "recorded run (narrow them with --where)")
    return draw_trajectories(trajectories_data(results, metric, y, where))


def _plot_runs(results, kind: str, x: str | None, y: str | None, metric: str | None, color: str | None,
               facet: str | None, by: list[str] | None):
    """The figure of a kind drawn from the runs table."""
    lazy = source(results)
    metric = metric or color or (default_metric(lazy) if kind != "loss" else None)
    if kind == "phase":
        axes = default_axes(lazy)
        x = x or (axes[0] if axes else None)
        y = y or next((a for a in axes if a != x), None)
        if x is None or y is None:
            raise AnalysisError("a phase diagram needs two varying axes (give --x and --y)")
        fig = draw_phase(phase_data(lazy, x, y, metric, facet))
    elif kind == "scaling":
        fig = draw_scaling(scaling_data(lazy, metric, x or "gamma"))
    elif kind == "trend":
        x = x or next(iter(default_axes(lazy)), None)
        if x is None:
            raise AnalysisError("a trend plot needs a varying axis (give --x)")
        fig = draw_trend(trend_data(lazy, x, metric, by))
    elif kind == "width":
        fig = draw_width(width_data(lazy, metric, x or "gamma"), metric, x or "gamma")
    else:
        if y == SEED:
            raise AnalysisError("seed cannot be a series: runs that differ only in seed are pooled")
        x = x or "gamma"
        y = y or next((a for a in default_axes(lazy) if a != x), None)   # one series per value, not pooled
        fig = draw_loss(loss_data(lazy, x, y), x, y)
    return fig
