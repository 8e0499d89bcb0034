"""One run on several processes: PyTorch's DistributedDataParallel, started by torchrun.

Two ways in, one code path:

- ``train.nproc: N`` (or ``pipeline train --nproc N``) in a plain process: :func:`launch`
  starts N copies of ``pipeline train`` with torchrun's own launcher (the elastic agent of
  ``torch.distributed.run``, standalone rendezvous on loopback) and waits for them. The DVC
  train stage and the Prefect train flow go through it unchanged: they call the same
  ``train``.
- ``torchrun --nproc-per-node N [--nnodes/--rdzv-*] -m pipeline train SPEC``: every process
  finds the launcher's environment (RANK, WORLD_SIZE, ...) and joins the group; the world is
  the launcher's (``train.nproc`` is then not read).

In a group, rank r of W trains on its part of each global batch (``train.batch_size`` is the
global batch; each rank takes ``batch_size / W`` of it), gradients are averaged by DDP, and
every metric and every stop decision (NaN/inf, early stopping, the pruner) is the same on all
ranks. Only rank 0 writes the run folder. The backend is gloo on CPU and NCCL on CUDA (one
process per GPU: rank r uses ``cuda:<local rank>``).

When a rank fails, torchrun's agent stops the others (SIGTERM, then SIGKILL) and
:func:`launch` raises a :class:`DistributedError` with the first failing rank's own message
(what its ``pipeline train`` printed), never a hang: collectives time out after
``PIPELINE_DIST_TIMEOUT`` seconds (default 300) where a peer vanished without closing its
connections.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import proc
from pipeline.errors import ConfigurationError, Interrupted, PipelineError

RANK_ERRORS = "PIPELINE_RANK_ERRORS"
"""The folder where each rank's ``pipeline train`` writes its error message (``rank<R>.txt``,
by ``pipeline.cli``) for the launcher to report."""


class DistributedError(PipelineError):
    """A distributed run that ended because one of its ranks failed: that rank's message."""


@dataclass(frozen=True)
class World:
    """This process's place in a group (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls) -> World:
        """The group torchrun's environment describes, or one process."""
        env = os.environ
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        size = int(env["WORLD_SIZE"])
        return cls(
            rank=int(env["RANK"]),
            size=size,
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            local_size=int(env.get("LOCAL_WORLD_SIZE", size)),
        )

    # ---- collectives (no-ops for one process) ---------------------------------------------

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def any(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (a bool tensor) is true on any rank."""
        if not self.distributed:
            return bool(flag.item())
        value = flag.to(torch.float32).reshape(1)
        return bool(self.all_sum(value).item() > 0)

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a decision taken once: the pruner's stop)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def local_first(self) -> Iterator[None]:
        """The block runs on each machine's local rank 0 first, then on its other ranks (data
        preparation: written once per machine, then found prepared)."""
        if self.distributed and self.local_rank != 0:
            self.barrier()
        yield
        if self.distributed and self.local_rank == 0:
            self.barrier()


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("PIPELINE_DIST_TIMEOUT", "300")))


@contextlib.contextmanager
def joined(world: World, device: torch.device) -> Iterator[torch.device]:
    """Join ``world``'s process group for the block (gloo on CPU, NCCL on CUDA) and give the
    device this rank trains on; one process: ``device`` as it is, no group."""
    if not world.distributed:
        yield device
        return
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", world.local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:  # the cores split between this machine's ranks
            torch.set_num_threads(max(1, proc.cores() // world.local_size))
    else:
        raise ConfigurationError(
            f"distributed training runs on cpu or cuda, not {device.type}; use train.device: "
            "auto, cpu or cuda"
        )
    already = torch.distributed.is_initialized()
    if not already:
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, timeout=_timeout(), **kwargs)
    try:
        yield device
    finally:
        if not already and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def backend() -> str | None:
    """The process group's backend, None outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return str(torch.distributed.get_backend())
    return None


def check_batch(batch_size: int, world: World, what: str = "train.batch_size") -> int:
    """Each rank's share of the global batch; a ConfigurationError when it does not divide."""
    if batch_size % world.size:
        raise ConfigurationError(
            f"{what} {batch_size} is the global batch and must divide by the {world.size} "
            f"processes (each takes an equal share): use a multiple of {world.size}, e.g. "
            f"{max(world.size, batch_size // world.size * world.size)}"
        )
    return batch_size // world.size


_LOST = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe")


@contextlib.contextmanager
def peers_watched(world: World) -> Iterator[None]:
    """A collective that fails because another rank is gone (its process died, its machine
    went away) is a :class:`DistributedError` saying so, not a traceback: the launcher
    reports the rank that failed first."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).strip()
        lost = isinstance(err, torch.distributed.DistError) or any(m in text.lower() for m in _LOST)
        if not world.distributed or not lost:
            raise
        first = text.splitlines()[0] if text else type(err).__name__
        raise DistributedError(
            f"rank {world.rank} lost contact with the other processes of the run ({first})"
        ) from None


# ---- the launcher ----------------------------------------------------------------------------


def worker_command(
    source: Path, overrides: Sequence[str], *, resume: bool, data: str | None, out: str | None
) -> list[str]:
    """The arguments after ``python`` that each rank runs."""
    args = ["-m", "pipeline", "train", str(source)]
    for item in overrides:
        args += ["-S", item]
    if resume:
        args.append("--resume")
    if data:
        args += ["--data", str(data)]
    if out:
        args += ["--out", str(out)]
    return args


def _failure_text(rank: int, failure: Any, errors: Path) -> str:
    mine = errors / f"rank{rank}.txt"
    if mine.is_file():
        text = mine.read_text(encoding="utf-8").strip()
        return text.removeprefix("error: ")
    code = getattr(failure, "exitcode", None)
    if isinstance(code, int) and code < 0:
        with contextlib.suppress(ValueError):
            return f"it was killed by {signal.Signals(-code).name}"
    return f"it exited with code {code}"


_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


def _handlers() -> dict[int, Any]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (getattr(signal, n) for n in _SIGNALS)}


def _restore(handlers: dict[int, Any]) -> None:
    for signum, handler in handlers.items():
        with contextlib.suppress(TypeError, ValueError):
            signal.signal(signum, handler)


def launch(
    source: Path,
    overrides: Sequence[str],
    nproc: int,
    *,
    resume: bool = False,
    data: str | None = None,
    out: str | None = None,
) -> None:
    """Run ``pipeline train`` in ``nproc`` processes on this machine (torchrun's launcher,
    standalone rendezvous) and wait for them; cores are split between them (each rank gets
    ``cores / nproc`` threads unless OMP_NUM_THREADS is set). A failed rank ends the others
    and raises :class:`DistributedError` with its message; Ctrl-C or SIGTERM stop every rank
    (each says what its run kept) and raise :class:`Interrupted`."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # what failed is said below, once
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    args = worker_command(source, overrides, resume=resume, data=data, out=out)
    names = ("OMP_NUM_THREADS", RANK_ERRORS, "PIPELINE_ORCHESTRATION")
    saved = {k: os.environ.get(k) for k in names}
    handlers = _handlers()
    with tempfile.TemporaryDirectory(prefix="pipeline-ranks-") as folder:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, proc.cores() // nproc)))
        os.environ[RANK_ERRORS] = folder
        os.environ["PIPELINE_ORCHESTRATION"] = "off"  # the ranks are this run, not new flows
        try:
            elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            raise DistributedError(
                f"the distributed run of {nproc} processes failed: rank {rank}: "
                f"{_failure_text(rank, failure, Path(folder))}"
            ) from None
        except SignalException as err:
            raise Interrupted(int(err.sigval)) from None
        finally:
            _restore(handlers)  # the launcher's own stay behind otherwise
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
