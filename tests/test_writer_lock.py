"""One writer per results directory (bench.writer_lock), and file system faults as one line:
a second `run` on a directory being written exits 2 naming the holder, a reader says the results
are still being written, a killed writer leaves no lock behind; a full disk or a vanished
directory ends `run` with one line and exit status 3, keeping the rows written so far."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import FILE_SYSTEM_EXIT, main
from bench.results import COMPLETE, METRIC, RunsFile, read_rows
from bench.writer_lock import HOLDER_FILE, DirectoryLocked, exclusive, writer_note
from tests.conftest import ROOT

RUN = ["run", "--suite", "quick", "--device", "cpu", "--estimators", "reparam", "--workers", "1"]


def completed(out: Path) -> int:
    return sum(r[METRIC] == COMPLETE for r in read_rows(out / "runs.csv"))


def test_a_second_writer_is_refused_naming_the_holder_and_a_crash_frees_the_lock(tmp_path, capsys):
    out = tmp_path / "shared"
    writer = subprocess.Popen(
        [sys.executable, "-m", "bench", *RUN, "--out", str(out)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / HOLDER_FILE).exists():
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert main([*RUN, "--out", str(out), "--resume"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"error: {out} is being written by pid"), (
            error
        )
        assert f"pid {writer.pid} on host" in error[0] and "bench run --suite quick" in error[0]
        note = writer_note(out)
        assert note is not None and f"pid {writer.pid}" in note
    finally:
        os.killpg(writer.pid, signal.SIGKILL)  # a crash: the kernel releases the lock
        writer.wait()
    assert writer_note(out) is None
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert completed(out) == 2
    assert not (out / HOLDER_FILE).exists()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive(tmp_path, "first"):
        with pytest.raises(DirectoryLocked, match="first"):
            with exclusive(tmp_path, "second"):
                pass
    with exclusive(tmp_path, "third"):
        pass


def test_a_full_disk_ends_run_with_one_line_keeping_the_finished_rows(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "full"
    append = RunsFile.append
    calls = []

    def fill_up(self, config, device, measurements):
        calls.append(config)
        if len(calls) == 2:  # the disk fills while the second configuration is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        append(self, config, device, measurements)

    monkeypatch.setattr(RunsFile, "append", fill_up)
    assert main([*RUN, "--out", str(out)]) == FILE_SYSTEM_EXIT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / 'runs.csv'}: No space left on device;"), error
    assert "--resume" in error
    assert completed(out) == 1
    monkeypatch.setattr(RunsFile, "append", append)
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert completed(out) == 2


def test_a_directory_deleted_mid_run_ends_with_one_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "gone"
    place = RunsFile.place

    def delete_first(self, config, device, phase, placement):
        for path in sorted(out.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        out.rmdir()
        place(self, config, device, phase, placement)

    monkeypatch.setattr(RunsFile, "place", delete_first)
    assert main([*RUN, "--out", str(out)]) == FILE_SYSTEM_EXIT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "No such file or directory" in error, error
    assert str(out) in error
