"""Figures: compute plain data first (`*_data`, polars frames and dicts), then draw it thinly.

    plot("results/quickstart", kind="phase", x="gamma", y="temperature", color="n_distinct",
         out="phase.png")

Kinds: `phase` (heat map over two axes colored by a metric or by symmetry class, critical
points overlaid, optional facets over a third axis), `scaling` (log-log runs, transition points,
the fitted bound and its bootstrap band), `width` (metric against width, one line per gamma),
`loss` (train and test loss along an axis). Axes whose grid spans more than a factor 10 are
drawn on log scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from phasemap.analysis import AnalysisError, _frame, _use_log, critical, scaling_fit, varying_axes

LABELS = {
    "gamma": "γ (weight decay)", "temperature": "T = η/S", "sigma": "σ (noise)", "width": "width",
    "teacher_rank": "teacher rank", "lr": "η (learning rate)", "batch_size": "S (batch size)",
    "n_distinct": "m (distinct neurons)", "n_dead": "dead neurons", "n_dos": "N_dos", "n_dosb": "N_dosb",
    "weight_rank": "rank of W_D⋯W_1", "rep_rank": "representation rank", "symmetry_class": "symmetry class",
    "train_loss": "train loss", "test_loss": "test loss", "input_scale": "input scale", "depth": "depth",
}
KINDS = ("phase", "scaling", "width", "loss")
MAX_LINES = 7    # lines in a width plot
MAX_CLASSES = 9  # the most frequent symmetry classes get their own color, the rest are "other"


def label(name: str) -> str:
    return LABELS.get(name, name)


def _edges(values: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted grid values (geometric midpoints on log axes)."""
    v = np.log(values) if log else values.astype(float)
    if len(v) == 1:
        mids = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        inner = (v[1:] + v[:-1]) / 2
        mids = np.concatenate([[v[0] - (inner[0] - v[0])], inner, [v[-1] + (v[-1] - inner[-1])]])
    return np.exp(mids) if log else mids


def phase_data(results, x: str, y: str, color: str, facet: str | None = None) -> dict:
    """Cells {x, y[, facet], value} (seed-mean of a metric, or the most common symmetry class)
    and the critical points of the metric along x for each y."""
    frame = _frame(results)
    for col in (x, y, color) + ((facet,) if facet else ()):
        if col not in frame.columns:
            raise AnalysisError(f"{col!r} is not a column of these results")
    keys = [x, y] + ([facet] if facet else [])
    categorical = frame.schema[color] == pl.String
    if categorical:
        cells = (frame.group_by(keys).agg(pl.col(color).mode().sort().first().alias("value")).sort(keys))
        top = frame[color].value_counts(sort=True)[color].head(MAX_CLASSES).to_list()
        cells = cells.with_columns(pl.when(pl.col("value").is_in(top)).then(pl.col("value"))
                                   .otherwise(pl.lit("other")).alias("value"))
        lines = None
    else:
        cells = frame.group_by(keys).agg(pl.col(color).cast(pl.Float64).mean().alias("value")).sort(keys)
        by = [y] + ([facet] if facet else [])
        lines = critical(frame, color, x, by=by, n_boot=50)
    return {"cells": cells, "critical": lines, "x": x, "y": y, "color": color, "facet": facet,
            "categorical": categorical,
            "log_x": _use_log(frame[x].unique().to_numpy().astype(float)),
            "log_y": _use_log(frame[y].unique().to_numpy().astype(float))}


def scaling_data(results, metric: str, axis: str = "gamma", method: str = "transitions") -> dict:
    """Runs, transition points, the fitted bound and a 95% band over bootstrap fits."""
    frame, beta, c, (xs, ys), fits = scaling_fit(results, metric, axis, method)
    grid = np.geomspace(frame[axis].min(), frame[axis].max(), 100)
    curves = np.array([cb * grid ** (-b) for b, cb in fits]) if fits else np.array([c * grid ** (-beta)])
    return {"runs": frame.select(axis, metric, *(["width"] if "width" in frame.columns else [])),
            "points": (xs, ys), "beta": beta, "C": c, "grid": grid, "fit": c * grid ** (-beta),
            "band": (np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)),
            "metric": metric, "axis": axis}


def width_data(results, metric: str, axis: str = "gamma") -> pl.DataFrame:
    """Seed-mean metric (and standard error) for each width and axis value."""
    frame = _frame(results)
    if "width" not in varying_axes(frame):
        raise AnalysisError("width takes a single value in these results; sweep width to see saturation")
    return (frame.group_by("width", axis)
            .agg(pl.col(metric).cast(pl.Float64).mean().alias("mean"),
                 (pl.col(metric).cast(pl.Float64).std() / pl.len().sqrt()).fill_null(0.0).alias("sem"))
            .sort(axis, "width"))


def loss_data(results, x: str, hue: str | None = None) -> pl.DataFrame:
    """Seed-mean train and test loss along x (one series per hue value)."""
    frame = _frame(results)
    keys = [x] + ([hue] if hue else [])
    return (frame.group_by(keys).agg(pl.col("train_loss").mean(), pl.col("test_loss").mean()).sort(keys))


def _scale(ax, which: str, log: bool) -> None:
    """Log or linear scale; on log axes only the decades are labelled."""
    from matplotlib.ticker import NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log" if log else "linear")
    if log:
        axis.set_minor_formatter(NullFormatter())


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", font_scale=1.1)
    import matplotlib.pyplot as plt

    return plt, sns


def draw_phase(data: dict):
    plt, sns = _style()
    cells, facet = data["cells"], data["facet"]
    panels = cells[facet].unique().sort().to_list() if facet else [None]
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, grid_axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.2, 3.6 * nrows), squeeze=False,
                                  sharex=True, sharey=True, constrained_layout=True)
    flat = list(grid_axes.flat)
    for unused in flat[len(panels):]:
        unused.set_visible(False)
    axes = [flat[:len(panels)]]
    xs_all = cells[data["x"]].unique().sort().to_numpy()
    ys_all = cells[data["y"]].unique().sort().to_numpy()
    if data["categorical"]:
        classes = sorted(cells["value"].unique().to_list(), key=lambda c: (c == "other", c))
        palette = sns.color_palette("tab10", len(classes))
        cmap = __import__("matplotlib.colors", fromlist=["ListedColormap"]).ListedColormap(palette)
    for ax, value in zip(axes[0], panels):
        part = cells if value is None else cells.filter(pl.col(facet) == value)
        grid = np.full((len(ys_all), len(xs_all)), np.nan)
        xi = {v: i for i, v in enumerate(xs_all)}
        yi = {v: i for i, v in enumerate(ys_all)}
        for row in part.iter_rows(named=True):
            code = classes.index(row["value"]) if data["categorical"] else row["value"]
            grid[yi[row[data["y"]]], xi[row[data["x"]]]] = code
        mesh = ax.pcolormesh(_edges(xs_all, data["log_x"]), _edges(ys_all, data["log_y"]), grid,
                             cmap=cmap if data["categorical"] else "viridis",
                             vmin=-0.5 if data["categorical"] else None,
                             vmax=len(classes) - 0.5 if data["categorical"] else None, shading="flat")
        if data["critical"] is not None and data["critical"].height:
            crit = data["critical"] if value is None else data["critical"].filter(pl.col(facet) == value)
            transitions = crit.group_by(["from", "to"], maintain_order=True)
            few = crit.select("from", "to").unique().height <= 6
            for (f, t), line in transitions:
                line = line.sort(data["y"])
                # a line where the boundary is traced over several rows, markers elsewhere
                style = "o-" if line.height >= 3 else "o"
                ax.plot(line["critical"], line[data["y"]], style, color="white", ms=3.5, lw=1.2,
                        markeredgecolor="black", markeredgewidth=0.5)
                if few:
                    ax.annotate(f"{f}→{t}", (line["critical"][-1], line[data["y"]][-1]), fontsize=7,
                                color="white", xytext=(2, 3), textcoords="offset points")
        _scale(ax, "x", data["log_x"])
        _scale(ax, "y", data["log_y"] and bool((ys_all > 0).all()))
        ax.set_xlabel(label(data["x"]))
        if value is not None:
            ax.set_title(f"{label(facet)} = {value:.3g}" if isinstance(value, float) else f"{label(facet)} = {value}")
    for row in grid_axes:
        row[0].set_ylabel(label(data["y"]))
    if data["categorical"]:
        handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i]) for i in range(len(classes))]
        fig.legend(handles, classes, title=label(data["color"]), loc="outside right upper", fontsize=7)
    else:
        fig.colorbar(mesh, ax=flat, label=label(data["color"]))
    return fig


def draw_scaling(data: dict):
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(4.8, 3.8), constrained_layout=True)
    runs = data["runs"]
    rng = np.random.default_rng(0)
    y = runs[data["metric"]].to_numpy().astype(float)
    ax.scatter(runs[data["axis"]], y * np.exp(rng.uniform(-0.03, 0.03, len(y))), s=6, alpha=0.25,
               color="0.4", label="runs", linewidths=0)
    ax.fill_between(data["grid"], *data["band"], color="C0", alpha=0.2, label="95% band")
    ax.plot(data["grid"], data["fit"], color="C0",
            label=f"C γ^(−β), β = {data['beta']:.2f}, C = {data['C']:.3g}")
    ax.plot(*data["points"], "o", color="C3", ms=4, label="transition points")
    _scale(ax, "x", True)
    _scale(ax, "y", True)
    ax.set_xlabel(label(data["axis"]))
    ax.set_ylabel(label(data["metric"]))
    ax.legend(fontsize=7, frameon=False)
    return fig


def draw_width(data: pl.DataFrame, metric: str, axis: str):
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(4.8, 3.8), constrained_layout=True)
    values = data[axis].unique().sort().to_list()
    if len(values) > MAX_LINES:  # a readable legend: evenly spread values, ends included
        values = [values[round(i)] for i in np.linspace(0, len(values) - 1, MAX_LINES)]
    colors = sns.color_palette("mako", len(values))
    for color, value in zip(colors, values):
        part = data.filter(pl.col(axis) == value).sort("width")
        ax.errorbar(part["width"], part["mean"], yerr=part["sem"], color=color, marker="o", ms=3,
                    label=f"{value:.3g}" if isinstance(value, float) else str(value))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel(label(metric))
    ax.legend(title=label(axis), fontsize=7, title_fontsize=8, frameon=False, loc="upper left")
    return fig


def draw_loss(data: pl.DataFrame, x: str, hue: str | None):
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(4.8, 3.8), constrained_layout=True)
    series = data[hue].unique().sort().to_list() if hue else [None]
    colors = sns.color_palette("rocket", len(series))
    for color, value in zip(colors, series):
        part = data if value is None else data.filter(pl.col(hue) == value)
        name = "" if value is None else f" ({label(hue)} = {value:.3g})" if isinstance(value, float) else f" ({value})"
        ax.plot(part[x], part["train_loss"], "-", color=color, label="train" + name)
        ax.plot(part[x], part["test_loss"], "--", color=color, label="test" + name)
    _scale(ax, "x", _use_log(data[x].to_numpy().astype(float)))
    _scale(ax, "y", True)
    ax.set_xlabel(label(x))
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, frameon=False)
    return fig


def plot(results, kind: str, out: str | Path, x: str | None = None, y: str | None = None,
         color: str | None = None, facet: str | None = None) -> Path:
    """Compute and draw one figure; the format follows out's suffix (.png, .svg, .pdf)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise AnalysisError(f"{out}: the figure must end in .png, .svg or .pdf")
    if kind == "phase":
        frame = _frame(results)
        axes = [a for a in varying_axes(frame) if a != "seed"]
        x = x or ("gamma" if "gamma" in axes else axes[0] if axes else None)
        y = y or next((a for a in axes if a != x), None)
        if x is None or y is None:
            raise AnalysisError("a phase diagram needs two varying axes (give --x and --y)")
        fig = draw_phase(phase_data(frame, x, y, color or "n_distinct", facet))
    elif kind == "scaling":
        fig = draw_scaling(scaling_data(results, color or "n_distinct", x or "gamma"))
    elif kind == "width":
        fig = draw_width(width_data(results, color or "n_distinct", x or "gamma"), color or "n_distinct", x or "gamma")
    elif kind == "loss":
        fig = draw_loss(loss_data(results, x or "gamma", y), x or "gamma", y)
    else:
        raise AnalysisError(f"unknown plot kind {kind!r}; use one of {', '.join(KINDS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=200)
    __import__("matplotlib.pyplot", fromlist=["close"]).close(fig)
    return out
