"""runs.csv → summary.md tables and seaborn plots (`python -m bench report --out DIR`).

Reads DIR/runs.csv (and DIR/gpu/runs.csv when present) in the long format the harness appends,
`dataset, model, estimator, kl, k, [beta,] device, seed, step, metric, value` (files without the
optional `beta` column mean β = 1), plus DIR/env.json, and
writes DIR/summary.md and DIR/plots/*.png. Nothing here trains or measures: the report can be
regenerated at any time, and two runs on the same files give byte-identical output (fixed sort
orders, no timestamps, PNGs saved without software metadata). Running configurations (no
`run_complete` row yet) are left out.

Modules: `runs` (reading and per-configuration status), `stats` (the statistics behind every
printed uncertainty), `comparisons` (rows against their section's best, and time to a target
ELBO), `tables` (the summary table and its markdown), `plots` (the shared look),
`training_plots`, `final_plots`, `sweep_plots` (SNR vs K, rate vs distortion) and `toy_plot`
(the nine plots), `writer` (write_report) and `cli` (the command).
"""

from bench.report.cli import add_report_arguments, main_report
from bench.report.runs import REQUIRED_COLUMNS, NoRunsError, load_runs
from bench.report.tables import summary_table
from bench.report.writer import PLOT_NAMES, write_report

__all__ = [
    "PLOT_NAMES",
    "REQUIRED_COLUMNS",
    "NoRunsError",
    "add_report_arguments",
    "load_runs",
    "main_report",
    "summary_table",
    "write_report",
]
