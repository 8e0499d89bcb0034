"""A stage's flow run on the pipeline's own server: recorded with the process that runs it, so
a run whose process died unreported (SIGKILL, out of memory, a power cut) is marked
``Crashed`` by the next stage instead of showing ``Running`` for ever; and a watch on the
server, so a stage whose server is stopped under it ends at once with one line instead of
minutes of Prefect's client retries. Prefect is imported inside the functions only."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator

from pipeline.orchestrate.server import Server
from pipeline.proc import pid_alive, process_tag, tag_gone

TAG = "pipeline-stage"
"""A stage's flow run carries the tag ``pipeline-stage:<host>:<pid>:<start>``: the host, the
pid and the start time (clock ticks since boot, so a reused pid does not pass for it) of the
process that runs it."""

ORPHAN_STATES = ("RUNNING", "PENDING")


def stage_tag(pid: int | None = None) -> str:
    return f"{TAG}:{process_tag(pid)}"


def _gone(tag: str) -> int | None:
    """The pid of the stage process ``tag`` names when it ran on this host and no longer
    runs; None when it runs, or ran elsewhere (nothing here can tell)."""
    return tag_gone(tag.removeprefix(f"{TAG}:"))


def crash_orphans() -> list[str]:
    """Mark ``Crashed`` each flow run (and its unfinished task runs) that a stage process of
    this host left ``Running`` or ``Pending`` when it died; the names of the runs marked. Runs
    against the current Prefect API (the pipeline's server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType(s) for s in ORPHAN_STATES]
    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))
            ),
            limit=200,
        )
        for run in runs:
            pids = [p for p in (_gone(t) for t in run.tags if t.startswith(TAG + ":")) if p]
            if not pids:
                continue
            why = (
                f"its stage process (pid {pids[0]} on {socket.gethostname()}) ended without "
                "reporting; marked Crashed by the next stage"
            )
            client.set_flow_run_state(run.id, Crashed(message=why), force=True)
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))
                ),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
            marked.append(run.name)
    return marked


def stopped_message(server: Server) -> str:
    return (
        f"error: the Prefect server at {server.url.removesuffix('/api')} stopped during the "
        "stage; the stage is stopped too (its flow run stays unfinished until the next stage "
        "marks it Crashed): run it again, which starts a new server"
    )


@contextlib.contextmanager
def watch(server: Server, every: float = 0.5) -> Iterator[None]:
    """While the block runs, end this process (exit 1, one line on stderr) as soon as the
    server's process is gone: Prefect's client would retry each call for about a minute,
    and the stage's outputs could never be reported. Outputs written so far stay (each is
    written atomically); ``train --resume`` continues from the last checkpoint."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(every):
            if not pid_alive(server.pid):
                if done.is_set():
                    return
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    print(stopped_message(server), file=sys.stderr, flush=True)
                os._exit(1)

    thread = threading.Thread(target=run, name="pipeline-server-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
