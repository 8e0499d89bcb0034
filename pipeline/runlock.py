"""One training at a time in a run folder: an ``fcntl.flock`` on ``runs/<name>/.lock``.

The lock is held for the whole train stage; a second training of the same folder fails at once
with :class:`RunLocked`, naming the holder (pid, host, start, command) that the holder wrote into
the lock file. The kernel drops the lock when its process ends, however it ends (``kill -9``
too), so a stale lock file never blocks: only a live holder does. Holding it is what makes the
folder's leftovers (temps of killed writes) safe to clear. Re-entrant within a process (the
train stage and the Trainer both take it). No torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.atomic import writing
from pipeline.errors import PipelineError

LOCK_NAME = ".lock"

_held: dict[str, int] = {}  # the lock files this process holds -> how many holds


class RunLocked(PipelineError):
    """Another process is training in this run folder."""

    retryable = True  # once the other run has ended


def _holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file; it writes right after taking the lock, so
    an empty file is read again for a moment."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict):
                return data
        time.sleep(0.05)
    return {}


def _locked_message(folder: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return (
            f"{folder} is in use by another training (its lock {folder / LOCK_NAME} is held); "
            "wait for it to end or stop it, or train under another name (-S name=...)"
        )
    pid, host = holder.get("pid"), holder.get("host")
    here = host == socket.gethostname()
    return (
        f"{folder} is in use by another training: pid {pid} on {host} since "
        f"{holder.get('started')} ({holder.get('command')}); wait for it to end, stop it "
        f"({'kill ' + str(pid) if here else 'on ' + str(host)}), or train under another "
        "name (-S name=...)"
    )


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder); RunLocked while another
    process holds it."""
    path = folder / LOCK_NAME
    key = str(path.absolute())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    with writing(path):
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(_locked_message(folder, _holder(fd))) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join(["pipeline", *sys.argv[1:]]),
        }
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock
