"""env.json: what produced a results directory (versions, hardware, commit, command)."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy
import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """Short hash of HEAD, with '-dirty' when tracked files outside results/ are modified (the
    committed results are output: a suite appended to them must not mark the next one dirty);
    'unknown' outside git."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def environment_record(device: torch.device, suite: str, argv: list[str]) -> dict[str, object]:
    """A JSON-ready description of the machine and software running `suite` on `device`;
    `argv` are the arguments after `python -m bench`."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "suite": suite,
        "command": " ".join(["python -m bench", *argv]),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device.type,
        "device_name": device_name,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_environment(path: Path, record: dict[str, object], keep_history: bool) -> None:
    """env.json describes the latest command; with `keep_history` (--resume), the earlier ones
    whose rows stay in runs.csv are kept, oldest first, under "history"."""
    if keep_history and path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        if isinstance(previous, dict) and previous:
            record["history"] = [*previous.pop("history", []), previous]
    path.write_text(json.dumps(record, indent=2) + "\n")
