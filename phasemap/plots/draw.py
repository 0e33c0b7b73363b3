"""Thin drawing of the `*_data` results with matplotlib and seaborn (imported only when drawing)."""

from __future__ import annotations

import numpy as np
import polars as pl

from phasemap.analysis import OK, use_log

LABELS = {
    "gamma": "γ (weight decay)", "temperature": "T = η/S", "sigma": "σ (noise)", "width": "width",
    "teacher_rank": "teacher rank", "lr": "η (learning rate)", "batch_size": "S (batch size)",
    "n_distinct": "m (distinct neurons)", "n_dead": "dead neurons", "n_dos": r"$N_\mathrm{dos}$",
    "n_dosb": r"$N_\mathrm{dosb}$", "weight_rank": r"rank of $W_D \cdots W_1$", "rep_rank": "representation rank",
    "symmetry_class": "symmetry class", "train_loss": "train loss", "test_loss": "test loss",
    "input_scale": "input scale", "depth": "depth",
}
SYMBOLS = {"gamma": "γ", "temperature": "T", "sigma": "σ", "lr": "η", "batch_size": "S"}   # in legends
MAX_LINES = 7    # lines in a width plot
MAX_GROUPS_SHOWN = 8  # hue values of a trajectories plot listed in a legend; more get a color bar
MAX_ROWS = 12    # up to this many y values a phase diagram draws one equal row per value
MAX_COUNTS = 12  # grid values per axis up to which a class map writes the agreement count into cells
DIVERGED = {"marker": "x", "color": "#d62728", "ms": 6, "mew": 1.6, "ls": "none"}


def label(name: str) -> str:
    return LABELS.get(name, name)


def cell_edges(values: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted grid values (geometric midpoints on log axes); the outer edges
    are the first and last values, so cells never reach beyond the data."""
    v = np.log(values) if log else values.astype(float)
    if len(v) == 1:
        pad = 0.1 * abs(v[0]) if v[0] else 0.5
        lo = v[0] - pad if log or v[0] - pad >= 0 or v[0] < 0 else 0.0
        mids = np.array([lo, v[0] + pad])
    else:
        mids = np.concatenate([[v[0]], (v[1:] + v[:-1]) / 2, [v[-1]]])
    return np.exp(mids) if log else mids


def _excluded_title(n_runs: int, n_diverged: int, n_failed: int) -> str:
    parts = [f"{k} of {n_runs} runs {what}" for k, what in ((n_diverged, "diverged"), (n_failed, "failed")) if k]
    return (", ".join(parts) + ", not in the means") if parts else ""


def _log_ticks(lo: float, hi: float) -> np.ndarray:
    """At least three readable ticks in [lo, hi]: 1-2-5 multiples, or finer, or rounded points."""
    decades = 10.0 ** np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    for subs in ((1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = np.array([m * d for d in decades for m in subs])
        ticks = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
        if len(ticks) >= 3:
            return ticks
    return np.array([float(f"{v:.2g}") for v in np.geomspace(lo, hi, 4)])


def _scale(ax, which: str, log: bool, values) -> None:
    """Log or linear scale with limits at the data's extent; a log axis spanning less than two
    decades gets several plainly labelled ticks (1-2-5) instead of one or two lone decades."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    values = np.asarray(values, dtype=float)
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log" if log else "linear")
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi > lo:
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    if log:
        axis.set_minor_formatter(NullFormatter())
        if hi / lo < 100:
            axis.set_major_locator(FixedLocator(_log_ticks(lo, hi)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(NullLocator())


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", font_scale=1.1)
    import matplotlib.pyplot as plt

    return plt, sns


def _outlined(width: float = 2.2, color: str = "black"):
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground=color)]


def _draw_critical(ax, crit: pl.DataFrame, y: str, ypos, handles: dict, points: float = 0) -> None:
    """Resolved points with horizontal CI bars, unresolved brackets as segments; ypos maps a
    y value to its place on the axis (a row index when the rows are few). Over sampled points
    (no cells) a black bar `points` tall marks each boundary among the markers."""
    resolved = crit.filter(pl.col("resolved"))
    for (f, t), line in resolved.group_by(["from", "to"], maintain_order=True):
        line = line.sort(y)
        xs, ys = line["critical"].to_numpy(), np.array([ypos(v) for v in line[y]])
        err = np.vstack([xs - line["ci_low"].to_numpy(), line["ci_high"].to_numpy() - xs])
        tick = None
        if points:
            (tick,) = ax.plot(xs, ys, ls="none", marker="|", ms=points, mew=1.8, color="black", zorder=4,
                              clip_on=False)
            tick.set_path_effects(_outlined(3.5, "white"))
        bars = ax.errorbar(xs, ys, xerr=err, fmt="o-" if line.height >= 3 else "o", color="white", ms=3.5,
                           lw=1.0, mec="black", mew=0.5, ecolor="white", elinewidth=1.0, capsize=1.5, zorder=4)
        for part in [*bars.lines[2], *bars.lines[1], bars.lines[0]]:
            part.set_clip_on(False)     # points on the first or last grid row sit on the axes' edge
        for part in bars.lines[2]:
            part.set_path_effects(_outlined())
        if tick is not None:            # in the legend a bar of the text's height
            from matplotlib.lines import Line2D

            tick = Line2D([], [], ls="none", marker="|", ms=10, mew=1.8, color="black")
        handles.setdefault("critical points (95% CI)", bars if tick is None else (tick, bars))
    unresolved = crit.filter(~pl.col("resolved") & pl.col("critical").is_not_null())
    for row in unresolved.iter_rows(named=True):
        (seg,) = ax.plot([row["ci_low"], row["ci_high"]], [ypos(row[y])] * 2, "|-", color="#ff7f0e", lw=2.0,
                         ms=8, mew=2.0, clip_on=False, zorder=4)
        handles.setdefault("unresolved: several levels between two sampled points" if points
                           else "unresolved: several levels in one grid step", seg)


def _center(edges: np.ndarray, i: int, log: bool) -> float:
    """The middle of cell i (geometric on a log axis)."""
    return float(np.sqrt(edges[i] * edges[i + 1]) if log else (edges[i] + edges[i + 1]) / 2)


def _draw_excluded(ax, part: pl.DataFrame, data: dict, xe, ye, xi, yi, handles: dict) -> None:
    """Cells without a value because too few runs finished: hatched; any cell with diverged or
    failed runs: a red x at its middle."""
    from matplotlib.patches import Rectangle

    bad = part.filter((pl.col("n_diverged") + pl.col("n_failed")) > 0)
    for row in bad.iter_rows(named=True):
        i, j = xi[row[data["x"]]], yi[row[data["y"]]]
        if row["value"] is None:
            ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], facecolor="0.92",
                                   hatch="xx", edgecolor=DIVERGED["color"], lw=0))
            handles.setdefault("no value: too few runs finished", Rectangle(
                (0, 0), 1, 1, facecolor="0.92", hatch="xx", edgecolor=DIVERGED["color"], lw=0))
        (mark,) = ax.plot([_center(xe, i, data["log_x"])], [_center(ye, j, data["log_y"])], zorder=5, **DIVERGED)
        mark.set_path_effects(_outlined(3.5, "white"))     # visible on a red class too
        handles.setdefault("cell with diverged/failed runs", mark)


def _draw_cells_categorical(ax, part: pl.DataFrame, data: dict, xe, ye, xi, yi, colors, handles) -> None:
    from matplotlib.patches import Rectangle

    write = len(xi) <= MAX_COUNTS and len(yi) <= MAX_COUNTS
    for row in part.filter(pl.col("value").is_not_null()).iter_rows(named=True):
        i, j = xi[row[data["x"]]], yi[row[data["y"]]]
        agree = row["agreement"]
        rect = Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j], facecolor=colors[row["value"]],
                         alpha=0.3 + 0.7 * agree, hatch="///" if agree < 1 else None, edgecolor="white", lw=0.3)
        ax.add_patch(rect)
        if agree < 1:
            handles.setdefault("seeds disagree: hatched, faded by the share in the class",
                               Rectangle((0, 0), 1, 1, facecolor="0.6", alpha=0.5, hatch="///", edgecolor="white"))
            if write:
                ax.annotate(f"{row['n_modal']}/{row['n_used']}", (_center(xe, i, data["log_x"]), _center(ye, j, data["log_y"])),
                            ha="center", va="center", fontsize=6, color="black")


def _padded(values: np.ndarray, log: bool, share: float = 0.03) -> np.ndarray:
    """The values' extent, `share` of its width (in log space on a log axis) wider on each side,
    so that markers at the ends are not cut in half by the frame."""
    v = np.log(values.astype(float)) if log else values.astype(float)
    lo, hi = float(v.min()), float(v.max())
    pad = share * (hi - lo) if hi > lo else (0.1 * abs(lo) if lo else 0.5)
    ends = np.array([lo - pad, hi + pad])
    return np.exp(ends) if log else ends


POINT = {"s": 26, "linewidths": 0.5, "zorder": 3}    # a sampled point of a non-grid (refined) phase map


def _draw_points(ax, part: pl.DataFrame, data: dict, ypos, colors, norm, handles: dict) -> None:
    """One marker per sampled point at its (x, y), colored by its seed-mean (or modal class,
    faded by the share of the seeds in it, dark-edged where they disagree); a light red-edged
    marker where too few runs finished; a red x behind a point with diverged or failed runs."""
    from matplotlib.lines import Line2D

    x, y = data["x"], data["y"]
    shown = part.filter(pl.col("value").is_not_null())
    xs, ys = shown[x].to_numpy().astype(float), np.array([ypos(v) for v in shown[y]], dtype=float)
    if data["categorical"]:
        agree = shown["agreement"].to_numpy()
        faces = [(*colors[c][:3], 0.3 + 0.7 * a) for c, a in zip(shown["value"], agree)]
        edges = ["black" if a < 1 else "white" for a in agree]
        ax.scatter(xs, ys, c=faces, edgecolors=edges, **POINT)
        if (agree < 1).any():
            handles.setdefault("seeds disagree: dark edge, faded by the share in the class",
                               Line2D([], [], marker="o", ls="none", color="0.6", alpha=0.6, mec="black"))
    else:
        ax.scatter(xs, ys, c=shown["value"].to_numpy(), cmap="viridis", norm=norm, edgecolors="white", **POINT)
    empty = part.filter(pl.col("value").is_null())
    if empty.height:
        ax.scatter(empty[x].to_numpy().astype(float), [ypos(v) for v in empty[y]], facecolors="0.92",
                   edgecolors=DIVERGED["color"], **{**POINT, "linewidths": 1.0})
        handles.setdefault("no value: too few runs finished", Line2D(
            [], [], marker="o", ls="none", mfc="0.92", mec=DIVERGED["color"], mew=1.0))
    bad = part.filter((pl.col("n_diverged") + pl.col("n_failed")) > 0)
    if bad.height:   # a red x behind the marker: its arms show, the point's color stays visible
        (mark,) = ax.plot(bad[x].to_numpy().astype(float), [ypos(v) for v in bad[y]],
                          **{**DIVERGED, "ms": 11, "mew": 2.0, "zorder": POINT["zorder"] - 0.5})
        mark.set_path_effects(_outlined(3.5, "white"))
        handles.setdefault("point with diverged/failed runs (red x behind it)", mark)


def _points_title(data: dict) -> str:
    names = ", ".join(SYMBOLS.get(a, a) for a in (data["x"], data["y"], data["facet"]) if a)
    return f"{data['n_points']} sampled ({names}) points, not a full grid: one marker each"


def draw_phase(data: dict):
    plt, sns = _style()
    cells, facet, x, y = data["cells"], data["facet"], data["x"], data["y"]
    panels = cells[facet].unique().sort().to_list() if facet else [None]
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // ncols)
    fig, grid_axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.4, 3.6 * nrows + 0.3), squeeze=False,
                                  sharex=True, sharey=True, constrained_layout=True)
    flat = list(grid_axes.flat)
    for unused in flat[len(panels):]:
        unused.set_visible(False)
    xs_all = cells[x].unique().sort().to_numpy()
    ys_all = cells[y].unique().sort().to_numpy()
    xi = {v: i for i, v in enumerate(xs_all)}
    yi = {v: i for i, v in enumerate(ys_all)}
    grid = data.get("grid", True)     # not a grid (a refined folder): a marker per sampled point, no cells
    xe = cell_edges(xs_all, data["log_x"]) if grid else _padded(xs_all, data["log_x"])
    rows = len(ys_all) <= MAX_ROWS    # a few y values: one equal row each, labelled with its value
    if rows:
        data = {**data, "log_y": False}
        ye = np.arange(len(ys_all) + 1) - 0.5

        def ypos(v):
            return yi[v]
    else:
        ye = cell_edges(ys_all, data["log_y"]) if grid else _padded(ys_all, data["log_y"])

        def ypos(v):
            return v
    handles: dict = {}
    if data["categorical"]:
        classes = sorted(cells["value"].drop_nulls().unique().to_list(), key=lambda c: (c == "other", c))
        colors = dict(zip(classes, sns.color_palette("tab10", len(classes))))
    else:
        finite = cells["value"].drop_nulls()
        vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0, 1)
    mesh = None
    for ax, value in zip(flat, panels):
        part = cells if value is None else cells.filter(pl.col(facet) == value)
        if not grid:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            norm = None if data["categorical"] else Normalize(vmin, vmax)
            _draw_points(ax, part, data, ypos, colors if data["categorical"] else None, norm, handles)
            if norm is not None:
                mesh = ScalarMappable(norm=norm, cmap="viridis")
        elif data["categorical"]:
            _draw_cells_categorical(ax, part, data, xe, ye, xi, yi, colors, handles)
        else:
            values = np.full((len(ys_all), len(xs_all)), np.nan)
            for row in part.filter(pl.col("value").is_not_null()).iter_rows(named=True):
                values[yi[row[y]], xi[row[x]]] = row["value"]
            mesh = ax.pcolormesh(xe, ye, values, cmap="viridis", vmin=vmin, vmax=vmax, shading="flat")
        if grid:
            _draw_excluded(ax, part, data, xe, ye, xi, yi, handles)
        if data["critical"] is not None and data["critical"].height:
            crit = data["critical"] if value is None else data["critical"].filter(pl.col(facet) == value)
            # the boundary bar: most of a row's height, at most 20 points (an axes is about 3 inches tall)
            _draw_critical(ax, crit, y, ypos, handles, points=0 if grid else min(20.0, 150.0 / len(ys_all)))
        _scale(ax, "x", data["log_x"], xe)
        if not data["log_x"] and np.issubdtype(xs_all.dtype, np.integer) and len(xs_all) <= MAX_ROWS:
            ax.set_xticks(xs_all)       # a few integer values (seeds, counts): a tick on each cell, not 0.5 steps
        if rows:
            ax.set_yticks(range(len(ys_all)), [f"{v:.4g}" if isinstance(v, float) else str(v) for v in ys_all])
            ax.set_ylim(ye[0], ye[-1])
            ax.tick_params(axis="y", which="minor", left=False)
        else:
            _scale(ax, "y", data["log_y"], ye)
        ax.set_xlabel(label(x))
        if value is not None:
            ax.set_title(f"{label(facet)} = {value:.3g}" if isinstance(value, float) else f"{label(facet)} = {value}")
    for row in grid_axes:
        row[0].set_ylabel(label(y))
    if data["categorical"]:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Rectangle

        class_handles = {c: Rectangle((0, 0), 1, 1, color=colors[c]) if grid
                         else Line2D([], [], marker="o", ls="none", color=colors[c]) for c in classes}
        fig.legend(list(class_handles.values()) + list(handles.values()), classes + list(handles),
                   title=label(data["color"]) + " (modal over seeds)", fontsize=7,
                   loc="outside right upper" if grid else "outside center right")   # clear of the points' title
    else:
        fig.colorbar(mesh, ax=flat[:len(panels)], label=label(data["color"]))
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 3),
                       fontsize=7, frameon=False)
    note = _excluded_title(data["n_runs"], data["n_diverged"], data["n_failed"])
    if not grid:
        fig.suptitle("\n".join([_points_title(data)] + ([note] if note else [])), fontsize=9,
                     color=DIVERGED["color"] if note else "black")
    elif note:
        fig.suptitle(note, fontsize=9, color=DIVERGED["color"])
    return fig


def draw_scaling(data: dict):
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(5.2, 4.0), constrained_layout=True)
    runs = data["runs"]
    rng = np.random.default_rng(0)
    y = runs[data["metric"]].to_numpy().astype(float)
    ax.scatter(runs[data["axis"]], y * np.exp(rng.uniform(-0.03, 0.03, len(y))), s=6, alpha=0.25,
               color="0.4", label="runs", linewidths=0)
    ax.fill_between(data["grid"], *data["band"], color="C0", alpha=0.2, label="95% band")
    ax.plot(data["grid"], data["fit"], color="C0",
            label=rf"$C\gamma^{{-\beta}}$, $\beta$ = {data['beta']:.2f}, $C$ = {data['C']:.3g}")
    xs, ys = data["points"]
    ci = data["points_ci"]
    ax.errorbar(xs, ys, xerr=np.vstack([xs - ci[:, 0], ci[:, 1] - xs]), fmt="o", color="C3", ms=4,
                elinewidth=1.0, capsize=1.5, label="transition points (95% CI)")
    for i, r in enumerate(data["unresolved"]):
        if r["from"] is not None and r["to"] is not None:
            ax.plot([r["ci_low"], r["ci_high"]], [max(r["from"], r["to"])] * 2, "|-", color="#ff7f0e", lw=2,
                    ms=7, mew=1.5, label="unresolved (not fitted)" if i == 0 else None)
    levels = [max(r["from"], r["to"]) for r in data["unresolved"] if r["from"] is not None and r["to"] is not None]
    shown = np.concatenate([y[y > 0], ys, levels, data["band"][0][data["band"][0] > 0], data["band"][1]])
    _scale(ax, "x", True, runs[data["axis"]].to_numpy())
    _scale(ax, "y", True, shown)
    ax.set_xlabel(label(data["axis"]))
    ax.set_ylabel(label(data["metric"]))
    ax.legend(fontsize=7, frameon=False)
    note = _excluded_title(data["n_runs"], data["n_excluded"], 0).replace("diverged", "diverged or failed")
    if note:
        ax.set_title(note, fontsize=8, color=DIVERGED["color"])
    return fig


def _width_axis(ax, widths: np.ndarray) -> None:
    """A log2 x axis with a tick at every width swept, ending at the first and last."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(widths))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(widths.min(), widths.max())


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
    bad = data.filter((pl.col("n_diverged") + pl.col("n_failed")) > 0)
    if bad.height:
        widths = bad["width"].unique().to_numpy()
        ax.plot(widths, np.full(len(widths), 0.96), transform=ax.get_xaxis_transform(), clip_on=False,
                label="widths with diverged/failed runs", **DIVERGED)
    _width_axis(ax, data["width"].unique().sort().to_numpy())
    ax.set_xlabel("width")
    ax.set_ylabel(label(metric))
    ax.legend(title=label(axis), fontsize=7, title_fontsize=8, frameon=False, loc="upper left")
    note = _excluded_title(int(data["n"].sum()), int(data["n_diverged"].sum()), int(data["n_failed"].sum()))
    if note:
        ax.set_title(note, fontsize=8, color=DIVERGED["color"])
    return fig


def _mark_excluded(ax, counts: pl.DataFrame, x: str) -> None:
    """At the top of the axes, a red x at every x where runs diverged or failed, with their count
    over all the runs there (`counts`: x, n, n_diverged, n_failed)."""
    bad = (counts.group_by(x).agg(pl.col("n").sum(), (pl.col("n_diverged") + pl.col("n_failed")).sum().alias("k"))
           .filter(pl.col("k") > 0).sort(x))
    if bad.height:
        ax.plot(bad[x], np.full(bad.height, 0.96), transform=ax.get_xaxis_transform(),
                label="diverged/failed runs (count) — not in the means", **DIVERGED)
        for row in bad.iter_rows(named=True):
            ax.annotate(f"{row['k']}/{row['n']}", (row[x], 0.96), xycoords=("data", "axes fraction"),
                        xytext=(0, -12), textcoords="offset points", ha="center", fontsize=7, color=DIVERGED["color"])


def draw_loss(data: pl.DataFrame, x: str, hue: str | None):
    plt, sns = _style()
    fig, ax = plt.subplots(figsize=(6.4, 3.9), constrained_layout=True)
    series = data[hue].unique().sort().to_list() if hue else [None]
    colors = sns.color_palette("rocket", len(series))
    for color, value in zip(colors, series):
        part = data if value is None else data.filter(pl.col(hue) == value)
        shown_value = f"{value:.3g}" if isinstance(value, float) else str(value)
        name = "" if value is None else f" ({SYMBOLS.get(hue, hue)} = {shown_value})"
        shown = part.filter(pl.col("train_loss").is_not_null())
        ax.plot(shown[x], shown["train_loss"], "o-", ms=3, color=color, label="train" + name)
        ax.plot(shown[x], shown["test_loss"], "s--", ms=3, color=color, label="test" + name)
    _mark_excluded(ax, data, x)
    _scale(ax, "x", use_log(data[x].to_numpy().astype(float)), data[x].to_numpy())
    ax.set_yscale("log")
    ax.set_xlabel(label(x))
    ax.set_ylabel("loss (mean over runs that finished)")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    note = _excluded_title(int(data["n"].sum()), int(data["n_diverged"].sum()), int(data["n_failed"].sum()))
    if note:
        ax.set_title(note, fontsize=8, color=DIVERGED["color"])
    return fig


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _ci(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if low is None else f"{value:.2g} [{low:.2g}, {high:.2g}]"


def _trend_text(row: dict, log: bool, axis: str) -> str:
    """ρ and the slope with their 95% CIs, as a title or a legend entry."""
    if row["slope"] is None:
        return f"no fit ({row['n_values']} values)"
    per = f"per decade of {SYMBOLS.get(axis, axis)}" if log else f"per unit {SYMBOLS.get(axis, axis)}"
    return (f"ρ = {_ci(row['rho'], row['rho_ci_low'], row['rho_ci_high'])}, "
            f"slope = {_ci(row['slope'], row['slope_ci_low'], row['slope_ci_high'])} {per}")


def draw_trend(data: dict):
    """Runs as faint dots, seed means ± standard error, the least-squares line and its 95% band;
    one color per group."""
    plt, sns = _style()
    from matplotlib.lines import Line2D

    groups, x, metric, table = data["groups"], data["x"], data["metric"], data["table"]
    fig, ax = plt.subplots(figsize=(9.0 if groups else 5.2, 4.0), constrained_layout=True)
    colors = sns.color_palette("tab10" if len(groups) else "deep", max(table.height, 1))
    lines = {tuple(line["group"].values()): line for line in data["lines"]}
    handles = {}
    for color, row in zip(colors, table.iter_rows(named=True)):
        key = tuple(row[g] for g in groups)
        match = [pl.col(g).eq_missing(v) for g, v in zip(groups, key)] or [pl.lit(True)]
        runs = data["runs"].filter(*match, pl.col("status") == OK, pl.col(metric).is_not_null())
        ax.scatter(runs[x], runs[metric], s=7, alpha=0.25, color=color, linewidths=0, zorder=2, clip_on=False)
        means = data["means"].filter(*match, pl.col("mean").is_not_null())
        bars = ax.errorbar(means[x], means["mean"], yerr=means["sem"], fmt="o", ms=4, color=color, mec="white",
                           mew=0.6, elinewidth=1.0, capsize=2, zorder=4)
        for part in [*bars.lines[2], *bars.lines[1], bars.lines[0]]:
            part.set_clip_on(False)     # means at the first and last axis value sit on the axes' edge
        line = lines.get(key)
        if line is not None:
            if line["band"] is not None:
                ax.fill_between(line["x"], *line["band"], color=color, alpha=0.2, lw=0, zorder=1)
            ax.plot(line["x"], line["fit"], color=color, lw=1.4, zorder=3)
        if row.get("saturation_width") is not None:
            ax.axvline(row["saturation_width"], color=color, ls=":", lw=1.2, zorder=1)
            handles.setdefault("saturation width (dotted)", Line2D([], [], color="0.4", ls=":"))
        if groups:
            name = ", ".join(f"{SYMBOLS.get(g, g)} = {_value(v)}" for g, v in zip(groups, key))
            handles[f"{name}: {_trend_text(row, data['log_x'], x)}"] = bars
    style = "0.35" if groups else colors[0]
    _mark_excluded(ax, data["means"], x)
    marked = dict(zip(*reversed(ax.get_legend_handles_labels())))
    handles = {"runs": Line2D([], [], marker="o", ls="none", ms=3, alpha=0.4, color=style, mew=0),
               "seed mean ± s.e.": Line2D([], [], marker="o", ms=4, ls="none", color=style),
               "least-squares fit, 95% band": Line2D([], [], color=style), **marked, **handles}
    values = data["runs"][x].unique().sort().to_numpy().astype(float)
    if x == "width" and data["log_x"]:
        _width_axis(ax, values)
    else:
        _scale(ax, "x", data["log_x"], values)
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(metric))
    if not groups:
        ax.set_title(_trend_text(table.row(0, named=True), data["log_x"], x), fontsize=8)
    legend = ax.legend(list(handles.values()), list(handles), fontsize=7, frameon=False,
                       **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if groups else {}))
    legend.set_zorder(5)
    note = _excluded_title(data["n_runs"], data["n_diverged"], data["n_failed"])
    if note:
        fig.suptitle(note, fontsize=8, color=DIVERGED["color"])
    return fig


def _axes_text(axes: dict) -> str:
    return ", ".join(f"{SYMBOLS.get(k, k)} = {_value(v)}" for k, v in axes.items())


def _break_lines(ax, steps: list[int]) -> None:
    for i, s in enumerate(steps):
        ax.axvline(s, color="black", ls=":", lw=1.0, zorder=1, label="symmetry breaking" if i == 0 else None)


def _log_extent(*arrays) -> np.ndarray:
    """The range of the finite values > 0 of these arrays (what a log axis shows), 10% wider on
    each side so that lines at the extremes do not run along the frame; [1, 10] if none."""
    values = np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in arrays])
    values = values[np.isfinite(values) & (values > 0)]
    return np.array([values.min() / 1.1, values.max() * 1.1]) if values.size else np.array([1.0, 10.0])


def draw_dynamics(data: dict):
    """The paper's Fig. 2 for one run: Δ of every norm-neighbour pair over training above, the
    loss below, dotted lines at the breaking times, triangles at the loss drops; the step axis
    starts a decade before the first break or drop."""
    plt, sns = _style()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.2), sharex=True, constrained_layout=True,
                                      gridspec_kw={"height_ratios": [1.15, 1]})
    steps, deltas = data["steps"], data["deltas"]
    shown = np.where(deltas > 0, deltas, np.nan)        # a log axis: Δ = 0 (two dead neurons) is not drawn
    colors = sns.color_palette("viridis", max(shown.shape[1], 1))
    for j in range(shown.shape[1]):
        top.plot(steps, shown[:, j], color=colors[j], lw=0.9, alpha=0.8)
    top.axhline(data["threshold"], color="#d62728", ls="--", lw=1.2, label=f"threshold {data['threshold']:g}")
    _break_lines(top, data["break_steps"])
    _scale(top, "y", True, _log_extent(shown, [data["threshold"]]))
    top.set_ylabel(f"Δ of the {shown.shape[1]} norm-neighbour pairs")
    top.legend(fontsize=7, frameon=False, loc="upper left")
    train, test = data["train_loss"], data["test_loss"]
    bottom.plot(steps, np.where(train > 0, train, np.nan), color="C0", lw=1.6, label="train loss")
    bottom.plot(steps, np.where(test > 0, test, np.nan), color="C0", lw=1.2, alpha=0.4, label="test loss")
    _break_lines(bottom, data["break_steps"])
    at = np.searchsorted(steps, data["drops"])
    bottom.plot(data["drops"], train[at], "v", color="#ff7f0e", ms=6, mec="black", mew=0.5, zorder=4,
                label="loss drop")
    _scale(bottom, "y", True, _log_extent(train, test))
    bottom.set_ylabel("loss")
    bottom.legend(fontsize=7, frameon=False, loc="best")
    # A long plateau before the first event would squeeze the breaks and drops into the last
    # decade: the axis starts a decade before the first of them.
    events = data["breaks"] + data["drops"] + ([data["diverged_at"]] if data["diverged_at"] else [])
    start = steps[np.searchsorted(steps, min(events) / 10)] if events else steps[0]
    _scale(bottom, "x", True, steps[steps >= start])
    bottom.set_xlabel("step" if start == steps[0] else f"step (before {start}: no break, no drop; not shown)")
    run = f"run {data['run_id'][:8]}" + (f" ({_axes_text(data['axes'])})" if data["axes"] else "")
    if data["n_matched"] > 1:
        run += f", first of {data['n_matched']} matching (choose with --run)"
    coincident = "" if data["coincident"] is None else f", {data['coincident']:.0%} at a loss drop"
    broke = (f"{len(data['breaks'])} pairs broke at {len(data['break_steps'])} steps{coincident}"
             if data["breaks"] else "no pair broke")
    summary = f"{broke}; {len(data['drops'])} loss drops"
    top.set_title(f"{run}\n{summary}", fontsize=9)
    if data["diverged_at"] is not None:
        for ax in (top, bottom):
            ax.axvline(data["diverged_at"], color=DIVERGED["color"], lw=1.2, label="diverged" if ax is top else None)
        top.legend(fontsize=7, frameon=False, loc="upper left")
    if data["status"] == "diverged":
        lost = data["diverged_at"]
        fig.suptitle("diverged" + (f": the loss is not finite from step {lost} on" if lost is not None else ""),
                     fontsize=9, color=DIVERGED["color"])
    return fig


def _hue_colors(values: list, ordered: bool) -> list:
    """Colors of a few hue values: dark to light viridis (light yellow left out, it fades on white)
    for numbers, tab10 for names."""
    import matplotlib

    if not ordered or len(values) == 1:
        return [matplotlib.colormaps["tab10"](i % 10) for i in range(len(values))]
    return [matplotlib.colormaps["viridis"](t) for t in np.linspace(0.0, 0.85, len(values))]


def draw_trajectories(data: dict):
    """A metric over training, one thin line per recorded run, one color per value of the hue axis
    (seeds of a value share it; a color bar instead of a legend beyond MAX_GROUPS_SHOWN numeric
    values); a red x where a diverged run's line ends."""
    plt, sns = _style()
    from matplotlib.lines import Line2D

    lines, hue, metric = data["lines"], data["hue"], data["metric"]
    fig, ax = plt.subplots(figsize=(6.6 if hue else 5.2, 4.0), constrained_layout=True)
    values = lines[hue].unique().sort().to_list() if hue else [None]
    bar = hue is not None and len(values) > MAX_GROUPS_SHOWN and lines.schema[hue].is_numeric()
    if bar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LogNorm, Normalize

        cmap = sns.color_palette("viridis", as_cmap=True)
        norm = (LogNorm if data["log_hue"] else Normalize)(min(values), max(values))
        colors = {v: cmap(norm(v)) for v in values}
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label(hue))
    else:
        colors = dict(zip(values, _hue_colors(values, hue is not None and lines.schema[hue].is_numeric())))
    counts = not data["log_y"]          # counts change in whole steps: drawn as steps, not slopes
    for row in lines.iter_rows(named=True):
        step, value = np.array(row["step"], dtype=float), np.array(row["value"], dtype=float)
        ax.plot(step, value, color=colors[row[hue] if hue else None], lw=0.9, alpha=0.75,
                drawstyle="steps-post" if counts else "default")
        if row["status"] == "diverged" and len(step):
            ax.plot(step[-1], value[-1], zorder=4, **DIVERGED)
    handles = {} if bar or not hue else {f"{SYMBOLS.get(hue, hue)} = {_value(v)}": Line2D([], [], color=colors[v])
                                         for v in values}
    if data["n_diverged"]:
        handles["diverged (its line ends)"] = Line2D([], [], **DIVERGED)
    if handles:
        ax.legend(list(handles.values()), list(handles), fontsize=7, frameon=False, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    steps = np.concatenate([np.array(s, dtype=float) for s in lines["step"].to_list()])
    _scale(ax, "x", True, steps)
    if data["log_y"]:
        _scale(ax, "y", True, _log_extent(*lines["value"].to_list()))
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(label(metric))
    note = [f"{data['n_runs']} recorded runs" + ("" if hue is None else ", seeds of a value in one color")]
    note += [f"{k} {what}" for k, what in ((data["n_diverged"], "diverged"), (data["n_failed"], "failed: no trace"))
             if k]
    ax.set_title("; ".join(note), fontsize=8, color=DIVERGED["color"] if len(note) > 1 else "black")
    return fig
