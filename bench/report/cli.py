"""`python -m bench report --out DIR [--no-toy]`: the report's command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.report.runs import NoRunsError
from bench.report.writer import write_report


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m bench report`."""
    parser.add_argument("--out", default="results", type=Path, help="results directory")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy-problem plot")


def main_report(args: argparse.Namespace) -> int:
    """Regenerate summary.md and plots; 0 on success, 2 (one line on stderr) without runs."""
    out = Path(args.out)
    try:
        written = write_report(out, toy=not args.no_toy)
    except NoRunsError:
        print(
            f"no runs.csv in {out}: run `make bench` or `python -m bench run ...` first",
            file=sys.stderr,
        )
        return 2
    except ValueError as error:
        print(f"error: malformed runs.csv: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written[0]} and {len(written) - 1} plots in {out / 'plots'}")
    return 0
