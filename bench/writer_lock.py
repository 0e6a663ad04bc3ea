"""One writer per results directory: `run` holds an exclusive OS lock (flock) on the directory for
its whole life, released by the kernel when the process ends however it ends, so a crash never
leaves the directory locked. The holder's pid, host, command and start time are in
DIR/.writer.json while it holds the lock. A second writer is refused with one line naming the
holder; readers (`report`, `compare`, `agree`) go ahead and say that the results are still being
written."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLDER_FILE = ".writer.json"


class DirectoryLocked(Exception):
    """Another process is writing the results directory; the message names it."""


def _open_directory(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)


def holder_text(directory: Path) -> str:
    """'pid 123 on host vm (python -m bench run ..., since 2026-12-03T00:30:00+00:00)', or
    'another process' when the holder wrote nothing readable yet."""
    try:
        holder = json.loads((directory / HOLDER_FILE).read_text())
        return (
            f"pid {holder['pid']} on host {holder['host']} ({holder['command']},"
            f" since {holder['since']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def exclusive(directory: Path, command: str) -> Iterator[None]:
    """Hold the directory's lock for the block; DirectoryLocked at once if another process holds
    it."""
    descriptor = _open_directory(directory)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLocked(
                f"{directory} is being written by {holder_text(directory)}: wait for it to end,"
                " or write to another --out"
            ) from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
        (directory / HOLDER_FILE).write_text(json.dumps({**holder, "since": since}) + "\n")
        try:
            yield
        finally:
            (directory / HOLDER_FILE).unlink(missing_ok=True)
    finally:
        os.close(descriptor)  # releases the lock


def writer_note(directory: Path) -> str | None:
    """For a reader: a line saying the results are still being written (by whom), or None when
    no process holds the directory's lock."""
    try:
        descriptor = _open_directory(directory)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"note: {directory} is still being written by {holder_text(directory)}"
    finally:
        os.close(descriptor)
    return None
