"""One self-contained HTML page per study: what ran, the phase diagram and its critical points, the
scaling fit, training dynamics, refinement, and every run that went wrong.

Figures are inline SVG, styles and the table-sorting script inline; the page makes no request of
any kind, so it opens offline and can be mailed. Every number comes from the same functions as
`phasemap show`, `critical`, `scaling` and `plot` (`summary.summarize`, `plots.*_data`), so the
page cannot disagree with them. Sections that do not apply to a study are left out.

    html = report(["results/quickstart"], title="Quickstart")
    Path("report.html").write_text(html)
"""

from __future__ import annotations

import hashlib
import html
import io
import time
import warnings
from importlib import metadata
from pathlib import Path

import polars as pl

from phasemap import store
from phasemap.analysis import AnalysisError, default_metric, independent_axes, require_columns, source
from phasemap.plots import draw_dynamics, draw_phase, draw_scaling, draw_width, dynamics_data, label, phase_data
from phasemap.plots import scaling_data, width_data
from phasemap.summary import ResultsError, summarize

MAX_PROBLEM_ROWS = 200        # diverged and failed runs listed one by one; the rest are counted
DYNAMICS_RUNS = 3             # recorded runs drawn, spread over the first axis
RASTER_POINTS = 2000          # a figure layer with more markers than this is drawn as an image
FOLDED_ROWS = 30              # a longer table starts folded
VERSIONS = ("phasemap", "torch", "ray", "polars", "pyarrow", "optuna")
# Columns that describe where and how a run trained, not what it is.
_WHERE = ("host", "device", "backend")

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1rem 1.25rem 4rem}
h1{font-size:1.6rem;margin:.5rem 0 .25rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin-top:1.5rem}
nav ol{columns:2;padding-left:1.2rem}@media(max-width:640px){nav ol{columns:1}}
figure{margin:1rem 0}figure svg{width:100%;height:auto;max-width:100%}
figcaption{font-size:.85rem;color:#555}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}th:after{content:" \\2195";color:#aaa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:.75rem;overflow-x:auto;font-size:.8rem}
.bad{color:#b00020}.note{color:#555;font-size:.9rem}summary{cursor:pointer;color:#0645ad}
"""

# Click a column header to sort by it (numbers as numbers); click again to reverse.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function(th, col){
  th.addEventListener("click", function(){
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "1" ? -1 : 1; th.dataset.dir = dir === 1 ? "1" : "-1";
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def report(results: list[str], metric: str | None = None, title: str | None = None) -> str:
    """The HTML page of one or more results folders (ResultsError: a folder without results)."""
    studies = [_study(str(r), metric) for r in results]
    title = title or ", ".join(s["name"] for s in studies)
    toc = "".join(f'<li><a href="#{sid}">{html.escape(head)}</a></li>'
                  for s in studies for sid, head, _ in s["sections"])
    body = "".join(f'<section id="{sid}"><h2>{html.escape(head)}</h2>{content}</section>'
                   for s in studies for sid, head, content in s["sections"])
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">phasemap report of "
            f"{html.escape(', '.join(results))}, made {time.strftime('%Y-%m-%d %H:%M %Z')} with {versions}.</p>"
            f"<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}</main><script>{SCRIPT}</script></body></html>")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _study(results: str, metric: str | None) -> dict:
    info = summarize(results)             # ResultsError for a missing or empty folder
    if not info["runs"]:
        raise ResultsError(f"{results}: no runs to report")
    runs = source(results).collect()
    info["meta"] = store.read_meta(results)
    name = ", ".join(info["sweeps"]) or Path(results).name
    key = "".join(c if c.isalnum() else "-" for c in name)[:40] + "-" + hashlib.blake2b(results.encode(), digest_size=3).hexdigest()
    metric = metric or default_metric(runs)
    require_columns(runs.schema, metric)  # a metric that is not there is refused, not a page without figures
    sections = [(f"{key}-study", f"{name}: the study", _overview(info, runs))]
    for sid, head, make in ((f"{key}-phase", f"{name}: phase diagram of {metric}", _phase),
                            (f"{key}-scaling", f"{name}: scaling of {metric}", _scaling),
                            (f"{key}-dynamics", f"{name}: training dynamics", _dynamics),
                            (f"{key}-refine", f"{name}: refinement", _refinement),
                            (f"{key}-problems", f"{name}: diverged and failed runs", _problems)):
        with warnings.catch_warnings(record=True) as caught:      # what the commands would warn, said here
            warnings.simplefilter("always")
            content = make(results, runs, metric)
        if content:
            said = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
            sections.append((sid, head, "".join(f'<p class="bad">warning: {html.escape(m)}</p>' for m in said)
                             + content))
    return {"name": name, "sections": sections}


def _svg(fig) -> str:
    """The figure as inline SVG (closed afterwards); a layer of more than RASTER_POINTS markers
    or lines is embedded as an image inside it, so that a million runs do not make a 100 MB page."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        for artist in ax.collections:
            if len(getattr(artist, "get_offsets", lambda: [])()) > RASTER_POINTS or len(artist.get_paths()) > RASTER_POINTS:
                artist.set_rasterized(True)
        for line in ax.lines:
            if len(line.get_xdata()) > RASTER_POINTS:
                line.set_rasterized(True)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", dpi=150)
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(fig, caption: str) -> str:
    return f"<figure>{_svg(fig)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _cell(value) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, float):
        return f'<td class="num" data-v="{value!r}">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num" data-v="{value}">{value:,}</td>'
    if isinstance(value, (list, tuple)):
        value = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    return f"<td>{html.escape(str(value))}</td>"


def _table(frame: pl.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A sortable table; one of more than FOLDED_ROWS rows is folded (click to open)."""
    headers = headers or {}
    head = "".join(f"<th>{html.escape(headers.get(c, name_of(c)))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in frame.iter_rows())
    table = f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    return table if frame.height <= FOLDED_ROWS else f"<details><summary>{frame.height:,} rows</summary>{table}</details>"


def _overview(info: dict, runs: pl.DataFrame) -> str:
    status = pl.DataFrame({"status": list(info["status"]), "runs": list(info["status"].values())})
    axes = pl.DataFrame({"axis": list(info["axes"]),
                         "values": [len(v) for v in info["axes"].values()],
                         "from": [_short(v[0]) for v in info["axes"].values()],
                         "to": [_short(v[-1]) for v in info["axes"].values()]})
    where = []
    for column in _WHERE:
        if column in runs.columns:
            counts = runs[column].drop_nulls().value_counts(sort=True)
            where.append(f"{column}: " + ", ".join(f"{v} ({n:,})" for v, n in counts.iter_rows()))
    timing = []
    if "train_seconds" in runs.columns:
        timing.append(f"training {runs['train_seconds'].sum():,.0f} s summed over runs")
    if "finished_at" in runs.columns and runs["finished_at"].drop_nulls().len() > 1:
        span = runs["finished_at"].max() - runs["finished_at"].min()
        span = span.total_seconds() if hasattr(span, "total_seconds") else float(span)
        timing.append(f"first to last result {span:,.0f} s")
    return (f"<p>{info['runs']:,} runs in {info['files']:,} files at <code>{html.escape(info['path'])}</code>"
            f" ({'; '.join(timing) or 'no timing columns'}).</p>"
            + _table(status) + "<h3>Axes</h3>" + _table(axes)
            + ("<p>" + "<br>".join(html.escape(w) for w in where) + "</p>" if where else "")
            + "".join(f'<p class="note">note: {html.escape(n)}</p>' for n in info["notes"])
            + _configuration(info, runs))


def _configuration(info: dict, runs: pl.DataFrame) -> str:
    """The sweep files and versions the runs files record; for files written before they did, the
    configuration read back from the rows."""
    out = ""
    with_spec = [m for m in info["meta"] if m.get("spec")]
    for meta in with_spec:
        versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
        out += (f"<h3>Sweep file {html.escape(str(meta.get('sweep', '')))}</h3>"
                f'<p class="note">as validated (with any --set), keys at their defaults left out; trained with '
                f"{html.escape(versions or 'unrecorded versions')}</p><pre>{html.escape(meta['spec'])}</pre>")
    if with_spec and len(with_spec) == len(info["meta"]) and info["meta"]:
        return out
    constant = {c: runs[c][0] for c in _config_columns(runs) if runs[c].n_unique() == 1 and runs[c][0] is not None}
    setup = "\n".join(f"{k}: {_short(v)}" for k, v in sorted(constant.items()))
    grid = "\n".join(f"  {axis}: [{', '.join(_short(v) for v in values)}]" for axis, values in info["axes"].items())
    return (out + "<h3>Configuration (from the rows: the values every run shares, then the grid)</h3>"
            + f"<pre>{html.escape(setup)}\ngrid:\n{html.escape(grid)}</pre>")


def _config_columns(runs: pl.DataFrame) -> list[str]:
    from phasemap.spec import FIELDS

    return [c for c in runs.columns if c in FIELDS]


def _short(value) -> str:
    if isinstance(value, pl.Series):
        value = value.to_list()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _plain(text: str) -> str:
    """A figure label without matplotlib's math markup, for HTML text."""
    return text.replace("$", "").replace(r"\cdots", "⋯").replace("\\", "")


def name_of(column: str) -> str:
    return _plain(label(column))


def _phase(results: str, runs: pl.DataFrame, metric: str) -> str:
    axes = independent_axes(runs)
    axes = sorted(axes, key=lambda a: a != "gamma")
    if len(axes) < 2 or metric not in runs.columns:
        return ""
    x, y = axes[0], axes[1]
    facet = axes[2] if len(axes) > 2 and runs[axes[2]].n_unique() <= 6 else None
    try:
        data = phase_data(runs, x, y, metric, facet)
    except AnalysisError:
        return ""
    pooled = [a for a in axes[2:] if a != facet]
    out = _figure(draw_phase(data), f"{name_of(metric)} over {name_of(x)} and {name_of(y)}"
                  + (f", one panel per {name_of(facet)}" if facet else "")
                  + (f"; each cell pools the seeds and every value of {', '.join(name_of(a) for a in pooled)}"
                     if pooled else "; each cell pools the seeds") + "; diverged and failed runs are marked.")
    if "symmetry_class" in runs.columns and runs["symmetry_class"].drop_nulls().len():
        classes = phase_data(runs, x, y, "symmetry_class", facet)
        out += _figure(draw_phase(classes), f"The symmetry class most seeds reached in each cell, over {name_of(x)} "
                       f"and {name_of(y)}, with the share of seeds that agree.")
    found = data["critical"]
    if found is not None and found.height:
        keep = [c for c in (y, facet, "from", "to", "critical", "ci_low", "ci_high", "resolved", "n_runs", "n_excluded",
                            "n_unsettled", "note") if c and c in found.columns]
        out += (f"<h3>Critical points along {html.escape(name_of(x))}</h3>"
                '<p class="note">Seeds pooled; CIs from 50 bootstrap resamples of the seeds, widened to the '
                "grid step (as in the figure; <code>phasemap critical</code> uses 200).</p>" + _table(found.select(keep)))
    return out


def _scaling(results: str, runs: pl.DataFrame, metric: str) -> str:
    if "gamma" not in runs.columns or runs["gamma"].n_unique() < 3:
        return ""
    try:
        data = scaling_data(runs, metric, "gamma")
    except AnalysisError as err:
        return f'<p class="note">No fit: {html.escape(str(err))}</p>'
    (b_lo, b_hi), (c_lo, c_hi) = data["beta_ci"], data["C_ci"]
    ci = f" (95% CI of β [{b_lo:.3g}, {b_hi:.3g}], of C [{c_lo:.3g}, {c_hi:.3g}], bootstrap over seeds)"
    out = (f"<p>{html.escape(name_of(metric))} ≤ C·γ<sup>−β</sup> with β = {data['beta']:.3g}, "
           f"C = {data['C']:.3g}{ci}, fitted to {len(data['points'][0])} transition points; "
           f"{data['n_excluded']:,} runs excluded (diverged, failed or without the metric).</p>"
           + _figure(draw_scaling(data), "Runs, transition points with their CIs, the fitted bound and its 95% band."))
    if "width" in runs.columns and runs["width"].n_unique() > 1:
        out += _figure(draw_width(width_data(runs, metric, "gamma"), metric, "gamma"),
                       "Width saturation: the metric against width, one line per γ.")
    return out


def _dynamics(results: str, runs: pl.DataFrame, metric: str) -> str:
    traced = store.read_traces(results)
    if not traced.height:
        return ""
    recorded = runs.filter(pl.col("run_id").is_in(traced["run_id"].unique().to_list()))
    axes = [a for a in independent_axes(recorded) if a in recorded.columns]
    order = recorded.sort(axes[0] if axes else "run_id")["run_id"].to_list()
    picks = [order[i * (len(order) - 1) // max(1, DYNAMICS_RUNS - 1)] for i in range(min(DYNAMICS_RUNS, len(order)))]
    out = f"<p>{len(order):,} recorded runs; {len(set(picks))} drawn, spread over {name_of(axes[0]) if axes else 'the runs'}.</p>"
    for run in dict.fromkeys(picks):
        try:
            out += _figure(draw_dynamics(dynamics_data(results, run)), f"run {run}")
        except AnalysisError:
            continue
    return out


def _refinement(results: str, runs: pl.DataFrame, metric: str) -> str:
    db = Path(results) / "refine.db"
    if "://" in results or not db.exists():
        return ""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows, per_round = [], {}
    for summary in optuna.get_all_study_summaries(f"sqlite:///{db.resolve()}"):
        study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db.resolve()}")
        trials = study.get_trials(deepcopy=False)
        told = [t for t in trials if t.user_attrs.get("run_ids")]
        if any("round" in t.user_attrs for t in told):
            per_round[summary.study_name] = (
                pl.DataFrame({"round": [t.user_attrs.get("round", 0) for t in told],
                              "runs": [len(t.user_attrs["run_ids"]) for t in told]})
                .group_by("round").agg(pl.len().alias("points"), pl.col("runs").sum()).sort("round"))
        rows.append({"study": summary.study_name, "points": len(trials),
                     "runs": len({r for t in told for r in t.user_attrs["run_ids"]}),
                     "first": str(min((t.datetime_start for t in trials if t.datetime_start), default="")),
                     "last": str(max((t.datetime_complete for t in trials if t.datetime_complete), default=""))})
    if not rows:
        return ""
    out = ("<p>Optuna studies of <code>phasemap refine</code> in this folder (refine.db): one trial per "
           "evaluated point.</p>" + _table(pl.DataFrame(rows)))
    for name, rounds in per_round.items():
        if rounds.height > 1:
            out += f"<h3>Rounds of {html.escape(name)}</h3>" + _table(rounds, {"round": "round (0: the coarse grid)"})
    return out


def _problems(results: str, runs: pl.DataFrame, metric: str) -> str:
    bad = runs.filter(pl.col("status") != "ok")
    if not bad.height:
        return "<p>Every run finished ok.</p>"
    axes = [a for a in independent_axes(runs) if a in bad.columns]
    keep = ["run_id", "status", *axes, *[c for c in ("seed", "diverged_step", "error") if c in bad.columns]]
    counts = bad.group_by("status").len().sort("status")
    out = "<p class=\"bad\">" + ", ".join(f"{n:,} {s}" for s, n in counts.iter_rows()) + " runs.</p>"
    if bad.height > MAX_PROBLEM_ROWS:
        out += f"<p class=\"note\">The first {MAX_PROBLEM_ROWS} are listed.</p>"
    return out + _table(bad.select(list(dict.fromkeys(keep))).head(MAX_PROBLEM_ROWS))
