"""Phase boundaries and scaling laws from a results folder (or a polars frame), as polars DataFrames.

    critical("results/lin", metric="weight_rank", axis="gamma")   # where the metric changes level
    scaling("results/pl", metric="weight_rank", axis="gamma")     # fit m <= C gamma^(-beta)
    trend("results/noise", metric="n_dos", axis="sigma")          # does n_dos grow with sigma?
    dynamics("results/fig2")                                       # breaks, loss drops, coincidence

Runs. Only runs of status ok with the metric measured are averaged (`n_runs`); the others
(diverged, failed) are counted per group (`n_excluded`), never silently dropped. A frame without a
`status` column is all ok. A grid value at which fewer than `min_seed_share` of the group's seeds
finished ok is not used to locate boundaries: the bracket of a crossing spans over it (its `note`
says so), and where no crossing spans it a row with `critical` null and `resolved` False says
that no boundary was located there.

Critical points. Within each group (the other varying axes; seeds pooled), the metric is
averaged over seeds at every grid value of the axis. A level boundary L - 1/2 is crossed where the
seed-mean passes from one side of it to the other; the bracket of the crossing is the last grid
value strictly on the old side and the first strictly on the new side. A mean exactly on the
boundary at a grid value (with 2 seeds, one at L and one at L - 1) is a point of the boundary:
the critical point is that grid value and the bracket reaches the neighbouring grid values on
either side; a curve that touches L - 1/2 and returns crosses nothing. One level boundary in a
bracket is a resolved critical point (`resolved` True), located by linear interpolation (in log
space when every axis value is > 0 and the grid spans more than a factor 10). Several levels
changing within one bracket (or overlapping brackets) are one unresolved row (`resolved` False):
`from` and `to` are the levels on either side, `critical` is the bracket's midpoint (geometric
on a log axis) and the CI is the bracket: the grid cannot say where, or in which order, the
levels change; use a denser grid there.

Confidence intervals. The CI of a resolved point is the hull of its bracket (the grid cannot
place it more precisely) and the 2.5-97.5% range of the crossing over bootstrap resamples of the
seeds (a resample that lacks the crossing is left out). With seeds that agree it is the bracket.

Scaling. The resolved points (gamma_m, m) at which the metric drops from m to m-1 lie on the
envelope m = C gamma^(-beta); a least-squares line through log m against log gamma_m gives beta
and C ("transitions", recommended: a fit over every run is biased by the floor of the counts).
Each bootstrap fit resamples the seeds and draws every transition point uniformly (log-uniformly
on a log axis) inside its bracket in that resample, so the CI of beta and C carries both the seed
and the grid uncertainty. The "quantile" method fits the q-quantile of the metric at each gamma
instead. `default_metric` picks the metric when none is given: weight_rank for linear students,
n_distinct otherwise.

Trends. Within each group, a least-squares line of the metric on the axis (on log10 of the axis
when it is read on a log scale, so the slope is per decade) and Spearman's rank correlation rho
(ties get their average rank) over every ok run at the axis values kept by the `min_seed_share`
rule; fewer than three such values give no slope and no rho, and a note. The 95% CIs are
percentiles over bootstrap resamples of whole seeds (all runs of a seed drawn together, since
runs of one seed share an initialisation), or of single runs when the group has fewer than
three seeds (`ci_method`). Along width, `saturation_width` is the smallest width from which on
every seed-mean lies within `tolerance` (relative) of the widest's, null when only the widest
does; `growth_last` is the relative growth between the two largest widths.

Dynamics. From the traces of runs with train.record: see phasemap.analysis.dynamics.
"""

from phasemap.analysis.dynamics import (DYNAMICS_SCHEMA, breaking_times, coincidence, drop_times, dynamics,
                                        recorded_runs, run_dynamics)
from phasemap.analysis.critical import CRITICAL_SCHEMA, critical, crossings, group_transitions
from phasemap.analysis.runs import (MIN_SEED_SHARE, OK, PRIMARY_AXES, SEED, AnalysisError, ControlsLeftOut, Curve,
                                    Results, default_metric, drop_log_controls, frame, group_columns,
                                    independent_axes, require_columns, seed_curves, source, use_log, varying_axes)
from phasemap.analysis.scaling import ScalingFit, scaling, scaling_fit, width_saturation
from phasemap.analysis.trend import TREND_SCHEMA, TrendFit, trend, trend_fit

__all__ = ["CRITICAL_SCHEMA", "DYNAMICS_SCHEMA", "breaking_times", "coincidence", "drop_times", "dynamics",
           "recorded_runs", "run_dynamics", "MIN_SEED_SHARE", "OK", "PRIMARY_AXES", "SEED", "TREND_SCHEMA", "AnalysisError",
           "ControlsLeftOut", "Curve", "Results", "ScalingFit", "TrendFit", "critical", "crossings", "default_metric",
           "drop_log_controls", "frame", "group_columns", "group_transitions", "independent_axes", "require_columns",
           "scaling", "scaling_fit", "seed_curves", "source", "trend", "trend_fit", "use_log", "varying_axes",
           "width_saturation"]
