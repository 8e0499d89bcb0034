"""Processes: whether one is alive (stale temporary folders of a killed prepare, the
pipeline-managed Prefect server), the cores this one may use, and a child that ends with its
parent. No heavy imports."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass  # no /proc here, or no such process: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def start_ticks(pid: int) -> str:
    """When ``pid`` started (``/proc/<pid>/stat`` field 22, clock ticks since boot); ``-``
    where that is unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def process_tag(pid: int | None = None) -> str:
    """``<host>:<pid>:<start>``: a process, told apart from a later one that reuses its pid."""
    import socket

    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_ticks(pid)}"


def tag_gone(tag: str) -> int | None:
    """The pid of the process ``tag`` (:func:`process_tag`) names when it ran on this host and
    no longer runs; None when it runs, or ran elsewhere (nothing here can tell)."""
    import socket

    try:
        host, pid, start = tag.rsplit(":", 2)
        number = int(pid)
    except ValueError:
        return None
    if host.rsplit(":", 1)[-1] != socket.gethostname():
        return None
    if not pid_alive(number):
        return number
    if start != "-" and start_ticks(number) not in ("-", start):
        return number  # the pid now belongs to another process
    return None


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def end_with_parent() -> None:
    """In a child, before it runs (``preexec_fn``): SIGTERM when its parent dies, so that it
    never outlives it (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
