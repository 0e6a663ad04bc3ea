"""A results directory → summary.md, summary.csv and seaborn plots (`python -m bench report`).

Reads only the directory (runs.csv, gpu/runs.csv, estimators.csv, env.json, toy.csv; see
bench.results): neither torch nor the estimator code is imported. Two runs on the same files
give byte-identical output (fixed sort orders, no timestamps, PNGs saved without metadata).

Modules by job: `data` (load and aggregate once), `stats` (the statistics behind every printed
uncertainty), `table` (the summary table's figures), `markdown` (summary.md: cells, tables,
notes, environment), `style` (number formats and the plots' shared look and axis helpers),
`plots` (the one list of plots: function, input, caption, skip reason) with the plot modules
`training_plots`, `final_plots`, `sweep_plots` and `toy_plot`, and `writer` (write_report).
"""

from bench.report.writer import write_report
from bench.results import NoRunsError

__all__ = ["NoRunsError", "write_report"]
