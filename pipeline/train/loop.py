"""``train``: the training loop over the spec's phases, with checkpoints, resume and stopping.

Around it: :mod:`pipeline.run` (the run folder, its record, files and lock), :mod:`.state` (what
a checkpoint carries for an exact resume), :mod:`.outcome` (how a run ends: train.json,
divergence, interruption), :mod:`.live` (dvclive, the progress bar), :mod:`.offline` (the
offline-augmented set), :mod:`.params` (freezing, parameter groups, penalties),
:mod:`.diagnostics` (per-layer statistics).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import atomic, runtime
from pipeline.errors import ConfigurationError, Interrupted
from pipeline.run import Run
from pipeline.spec.spec import Spec
from pipeline.spec.train import Phase
from pipeline.train import checkpoint as ckpt
from pipeline.train import diagnostics, distributed, outcome
from pipeline.train import params as P
from pipeline.train.averaging import WeightEMA, WeightSWA
from pipeline.train.distributed import World
from pipeline.train.epoch import optimizer_steps, train_epoch
from pipeline.train.finish import finish_swa
from pipeline.train.live import RUN_COLUMNS, log_live, open_live
from pipeline.train.metrics import training_targets
from pipeline.train.optim import build_optimizer
from pipeline.train.outcome import TrainingDiverged
from pipeline.train.schedules import LRSchedule
from pipeline.train.state import State, Stopper, better, direction, rng_state, set_rng_state
from pipeline.train.topk import TopK

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "train"]

Log = Callable[[str], None]
OnEpoch = Callable[[dict[str, Any]], str | None]
"""Called with each epoch's row of history once the epoch is checkpointed; a text it returns
stops the training there, as early stopping does, and is the reason recorded (a search's
pruner stops a trial this way)."""


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped: str | None
    run_dir: Path


def _quiet(_message: str) -> None:
    """The other ranks' log: rank 0 speaks for the group."""


def _phases(spec: Spec) -> list[Phase]:
    return list(spec.train.phases) or [Phase(name="train", epochs=spec.train.epochs)]


class Trainer:
    """One training run of a spec. ``train()`` is the usual entry point."""

    def __init__(
        self,
        spec: Spec,
        prepared: Any,
        *,
        run: Run,
        log: Log = print,
        on_epoch: OnEpoch | None = None,
        world: World | None = None,
        device: torch.device | None = None,
    ) -> None:
        from pipeline.data.augment import build_augment
        from pipeline.data.loader import BatchLoader
        from pipeline.model.build import build_model
        from pipeline.train.offline import offline_set

        self.spec, self.run_folder, self.on_epoch = spec, run, on_epoch
        self.world = world or World()
        self.main = self.world.main
        self.log = log if self.main else _quiet  # rank 0 speaks for the group
        t = spec.train
        runtime.tune_allocator()
        self.device = device or runtime.pick_device(t.device)
        runtime.seed_everything(spec.seed, deterministic=t.deterministic)
        self.model = build_model(spec, device=self.device)
        if t.sync_batch_norm and self.world.distributed:
            if self.device.type != "cuda":
                raise ConfigurationError(
                    "train.sync_batch_norm needs CUDA: PyTorch's SyncBatchNorm runs on GPUs "
                    "only. On CPU each process normalizes by its own share of the batch: set "
                    "sync_batch_norm: false"
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        P.set_trainable(P.select(self.model, t.freeze), False)
        # what each phase starts from: the layers' own trainable flags and train.freeze
        self.base_trainable = {id(p): p.requires_grad for p in self.model.parameters()}
        self.memory_format = runtime.memory_format(self.model, t.channels_last)
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        self.eval_forward = torch.compile(self.model) if t.compile else self.model
        self.forward = self.eval_forward  # training's: wrapped in DDP per phase in a group
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.ema = WeightEMA(self.model, t.ema) if t.ema else None  # validated, evaluated
        self.swa = WeightSWA(self.model, t.swa) if t.swa else None
        self.amp = runtime.autocast_dtype(t.precision, self.device)
        self.precision = runtime.precision_name(self.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loss, self.mix, self.metrics = training_targets(spec, prepared, self.world)
        self.constraints = P.constraints(self.model, spec)
        common = {"device": self.device, "memory_format": self.memory_format}
        shard = (self.world.rank, self.world.size) if self.world.distributed else None
        if shard is not None:
            distributed.check_batch(t.batch_size, self.world)
        sampling = {"shuffle": True, "seed": spec.seed, "balanced": t.sampler == "balanced",
                    "drop_last": t.drop_last, "shard": shard, **common}  # fmt: skip
        if spec.augment.mode == "offline" and spec.augment.transforms:
            x, y = offline_set(spec, prepared, self.log)
            self.train_loader = BatchLoader(
                x, y, t.batch_size, mean=prepared.mean, std=prepared.std, **sampling)  # fmt: skip
        else:
            self.train_loader = BatchLoader.from_prepared(
                prepared, "train", t.batch_size, transform=build_augment(spec.augment),
                **sampling)  # fmt: skip
        self.val_loader = (
            BatchLoader.from_prepared(
                prepared, "val", spec.evaluate.batch_size, part=shard, **common
            )
            if "val" in prepared.splits
            else None
        )
        monitor = t.checkpoint.monitor
        if monitor == "auto":  # the best checkpoint is what early stopping restores
            monitor = (
                t.early_stopping.monitor
                if t.early_stopping
                else "val_loss"
                if self.val_loader is not None
                else "loss"
            )
        self.monitor, self.monitor_mode = monitor, direction(monitor, t.checkpoint.mode)
        self.stopper = Stopper(t.early_stopping) if t.early_stopping else None
        keep = t.checkpoint.keep_top
        self.top = TopK(run.checkpoints, keep, monitor, self.monitor_mode) if keep else None
        self.state = State()
        self.run_id: str | None = None

    # ---- phases ------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> tuple[torch.optim.Optimizer, LRSchedule]:
        for p in self.model.parameters():
            p.requires_grad_(self.base_trainable[id(p)])
        P.set_trainable(P.select(self.model, phase.freeze), False)
        P.set_trainable(P.select(self.model, phase.unfreeze), True)
        opt_spec = phase.optimizer or self.spec.optimizer
        if phase.lr is not None:
            opt_spec = opt_spec.model_copy(update={"lr": phase.lr})
        self.opt_spec = opt_spec
        if self.world.distributed:  # DDP hooks the parameters that train in this phase
            ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            self.ddp, self.forward = ddp, torch.compile(ddp) if self.spec.train.compile else ddp
        optimizer = build_optimizer(opt_spec, P.param_groups(self.model, opt_spec))
        schedule = LRSchedule(
            phase.schedule or self.spec.schedule,
            optimizer,
            steps_per_epoch=optimizer_steps(len(self.train_loader), self.spec.train.accumulate),
            epochs=phase.epochs,
        )
        return optimizer, schedule

    # ---- one epoch ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of ``model``, by default the model validated: train.ema's average if set."""
        model = model or (self.ema.module if self.ema is not None else self.eval_forward)
        model.eval()
        metrics = self.metrics(self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp)
            if self.amp
            else contextlib.nullcontext()
        )
        for x, y in loader:
            with autocast:
                logits = model(x)  # never DDP's: the ranks' parts differ in length
            metrics.update(logits.float(), y, self.loss(logits.float(), y))
        return metrics.compute(self.world)

    # ---- checkpoints --------------------------------------------------------------------

    def _save(self, name: str | Path, optimizer: Any, schedule: Any, phase_index: int) -> None:
        """Checkpoint ``name`` (best, last) or the file at a path (a top-k one)."""
        if name == "last":
            self.state.saved = self.state.epoch
        if not self.main:
            return
        path = name if isinstance(name, Path) else self.run_folder.checkpoint(name)
        ckpt.save(path, self.spec, {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "phase": phase_index,
            **self.state.to_checkpoint(),
            "rng": rng_state(),
            "loader_epoch": self.train_loader.epoch,
            "run_id": self.run_id,
        })  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        """Take up a stopped run from its last checkpoint: all but optimizer and schedule,
        which its phase's own take when the phase is entered."""
        last = self.run_folder.checkpoint("last")
        ckpt.load_weights(self.model, state, last)
        for what, average in (("ema", self.ema), ("swa", self.swa)):
            if average is not None and not state.get(what):
                raise ckpt.CheckpointError(
                    f"{last} cannot be resumed exactly: it holds no train.{what} average (the "
                    f"spec added train.{what} since); train again without --resume"
                )
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.state = State.from_checkpoint(state)
        if self.stopper is not None:
            self.stopper.check(self.state)  # a run that had stopped stays stopped
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.train_loader.set_epoch(state["loader_epoch"])
        set_rng_state(state["rng"])

    def _write_history(self) -> None:
        if self.state.history and self.main:
            self.run_folder.write_csv(self.run_folder.history, self.state.history)

    # ---- the run ------------------------------------------------------------------------

    def run(self, *, resume: bool = False) -> TrainResult:
        """Train (``resume``: from the run's ``last.pt``, when there is one), holding the run
        folder's lock. Ctrl-C or SIGTERM raise :class:`Interrupted` saying what was kept."""
        lock = self.run_folder.lock() if self.main else contextlib.nullcontext()
        with lock, outcome.stops(self._stopped):
            return self._run(resume)

    def _stopped(self, signum: int) -> Interrupted:
        return outcome.interrupted(signum, self.state, self.run_folder)

    def _run(self, resume: bool) -> TrainResult:
        run, spec = self.run_folder, self.spec
        for path in run.remove_temps() if self.main else ():
            self.log(f"{spec.name}: removed a temporary file of a write that was killed: {path}")
        resume_state, last = None, run.checkpoint("last")
        if resume and not last.is_file():
            self.log(f"{spec.name}: no checkpoint at {last} to resume from: starting fresh")
        elif resume:
            resume_state = ckpt.load(last, spec, map_location=self.device, resume=True)
            self._restore(resume_state)
            self.log(f"resuming {spec.name} after epoch {self.state.epoch}")
        self.world.barrier()  # every rank has read the checkpoint before rank 0 starts the run
        if self.main:
            record = run.start(
                spec,
                resume=resume_state is not None,
                device=self._describe_device(),
                run_id=resume_state.get("run_id") if resume_state is not None else None,
                log=self.log,
            )
            self.run_id = record["id"]
            if resume_state is not None:  # rows of an epoch that was not checkpointed go
                diagnostics.trim(run, self.state.epoch)
            with atomic.writing(run.live):
                self.live = open_live(run.live, self.state.history)
        phases = _phases(spec)
        start_phase = resume_state["phase"] if resume_state is not None else 0
        phase_start = sum(p.epochs for p in phases[:start_phase])
        for index in range(start_phase, len(phases)):
            if self.state.stopped:
                break
            phase = phases[index]
            optimizer, schedule = self._enter(phase)
            if resume_state is not None and index == start_phase:
                optimizer.load_state_dict(resume_state["optimizer"])
                schedule.load_state_dict(resume_state["schedule"])
                if self.swa is not None:  # its annealing is bound to this optimizer
                    self.swa.load_state_dict(resume_state["swa"], optimizer)
            for epoch in range(max(self.state.epoch, phase_start), phase_start + phase.epochs):
                self._epoch(epoch, phase, index, optimizer, schedule)
                if self.state.stopped:
                    break
            phase_start += phase.epochs
        if self.main:
            with atomic.writing(run.live):
                self.live.end()  # each epoch's files are already written; end() closes
        if self.state.stopped:
            self.log(self.state.stopped)
        weights = self._restore_best() if self.main else None
        swa = finish_swa(self) if self.swa is not None and self.state.epoch else None
        if swa is not None:  # the run's result is the average, whatever restore_best took
            weights = {"epoch": self.state.epoch, "restored_best": False, "swa": swa}
        self._write_summary(weights=weights)
        self.world.barrier()  # rank 0's files are written before any rank returns
        return TrainResult(
            self.model, self.state.history, self.state.best_epoch, self.state.stopped, run.dir
        )

    def _restore_best(self) -> dict[str, Any]:
        """Early stopping's restore_best: the best checkpoint's weights, said and recorded.
        Which epoch's weights the model ends with."""
        s, es, best_path = self.state, self.spec.train.early_stopping, self.run_folder.checkpoint()
        if es is None or not es.restore_best or not best_path.is_file():
            return self._averaged({"epoch": s.epoch, "restored_best": False})
        best = ckpt.load(best_path, self.spec, map_location=self.device)
        if best["epoch"] == s.epoch:  # the last epoch is the best
            return self._averaged({"epoch": s.epoch, "restored_best": False})
        ckpt.load_weights(self.model, best, best_path, averaged=True)
        self.log(
            f"restored the weights of the best epoch {best['epoch']} ({self.monitor} "
            f"{best['best']:.4f}) from {best_path}; last.pt keeps epoch {s.epoch}'s"
        )
        return self._averaged({"epoch": best["epoch"], "restored_best": True}, loaded=True)

    def _averaged(self, weights: dict[str, Any], loaded: bool = False) -> dict[str, Any]:
        """With train.ema the model ends with the average (``loaded``: already), as validated
        and saved; ``weights`` says so."""
        if self.ema is None:
            return weights
        if not loaded:
            self.model.load_state_dict(self.ema.weights())
        return {**weights, "ema": True}

    def _diverged(self, epoch: int, err: TrainingDiverged) -> TrainingDiverged:
        """Record a divergence (history, train.json); the error says truly what is kept."""
        self.state.stopped = f"diverged: {err}"
        self._write_history()
        error, entry = outcome.diverged(str(err), epoch, self.state, self.run_folder)
        self._write_summary(weights=None, diverged=entry)
        return error

    def _epoch(
        self, epoch: int, phase: Phase, index: int, optimizer: Any, schedule: LRSchedule
    ) -> dict[str, Any]:
        began = time.perf_counter()
        averaging = self.swa is not None and self.swa.active(epoch)
        if self.swa is not None:
            self.swa.begin(epoch, optimizer)
        lr = optimizer.param_groups[0]["lr"]
        try:
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "phase": phase.name or str(index + 1),
                "lr": lr,
                **train_epoch(self, epoch, optimizer, schedule, swa=averaging),
            }
        except TrainingDiverged as err:
            raise self._diverged(epoch, err) from None
        train_s = time.perf_counter() - began
        if averaging:  # SWALR sets the next epoch's rate, not the schedule
            self.swa.end_epoch(self.model)  # type: ignore[union-attr]
        if self.val_loader is not None:
            row.update({f"val_{k}": v for k, v in self.evaluate(self.val_loader).items()})
        row["time_s"] = round(time.perf_counter() - began, 3)
        row["train_images_per_s"] = round(self.train_loader.n / train_s, 1)
        if not averaging:
            schedule.after_epoch(row)
        if self.spec.train.diagnostics and self.main:  # before the checkpoint: draws dropout
            diagnostics.record(self.run_folder, epoch, self.model, self.loss, self.train_loader)
        s = self.state
        s.epoch = epoch + 1
        s.history.append(row)
        if self.stopper is not None:
            self.stopper.update(row, s)  # before the checkpoint: it holds the count
        if self.monitor in row and better(row[self.monitor], s.best, self.monitor_mode):
            s.best, s.best_epoch = row[self.monitor], epoch + 1
            if self.spec.train.checkpoint.best:
                self._save("best", optimizer, schedule, index)
        if self.top is not None and self.main:
            self.top.update(s.history, lambda path: self._save(path, optimizer, schedule, index))
        self._save("last", optimizer, schedule, index)  # always: --resume needs it
        self._write_history()
        if self.main:
            with atomic.writing(self.run_folder.live):
                log_live(self.live, row)
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in row.items()
            if isinstance(v, float) and k not in RUN_COLUMNS and k != "lr" and "/" not in k
        )
        self.log(
            f"epoch {epoch + 1} [{row['phase']}] lr {lr:.3g} {shown} "
            f"({row['time_s']:.1f} s, {row['train_images_per_s']:,.0f} img/s)"
        )
        if self.on_epoch is not None and not s.stopped:
            s.stopped = self.world.from_main(self.on_epoch(row) if self.main else None)
        return row

    def _describe_device(self) -> dict[str, Any]:
        """What run.json records the run ran on: the device, the precision and the group."""
        out = {**runtime.describe_device(self.device), "precision": self.precision}
        if self.world.distributed:
            out["world_size"] = self.world.size
            out["backend"] = distributed.backend()
        return out

    def _write_summary(self, **how: Any) -> None:
        if not self.main:
            return
        s = outcome.summary(self.run_id, self.state, self.monitor, **how)
        s["precision"] = self.precision
        if self.top is not None:
            s["top_checkpoints"] = self.top.listing(self.state.history)
        s["world_size"] = self.world.size
        self.run_folder.write_json(self.run_folder.summary, s)


def train(
    spec: Spec,
    *,
    prepared: Any = None,
    out: Path | None = None,
    resume: bool = False,
    log: Log = print,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train the spec's model on its prepared data; writes checkpoints and history under
    ``runs/<name>`` (or ``out``), first recording the run (:meth:`Run.start`: a fresh run
    replaces the folder's earlier one). The device is checked and the run folder locked
    (:class:`pipeline.runlock.RunLocked` while another process trains there) before any
    work. Raises TrainingDiverged with a clear message on NaN/inf, Interrupted on Ctrl-C or
    SIGTERM. ``on_epoch`` (see :data:`OnEpoch`) sees each epoch and may stop the run.

    With ``train.nproc`` > 1 in a plain process, the run is that many processes
    (:func:`pipeline.train.distributed.launch`, which needs the spec's file); under torchrun,
    this process is one rank of the launcher's group (:mod:`pipeline.train.distributed`)."""
    from pipeline.data.prepare import prepare

    device = runtime.pick_device(spec.train.device)  # a missing device fails first
    world = World.from_env()
    run = Run(out) if out else Run.of(spec)
    if not world.distributed and spec.train.nproc > 1:
        if on_epoch is not None:
            raise ConfigurationError(
                "train.nproc > 1 cannot report each epoch to a caller in this process (a "
                "search trial): set train.nproc: 1"
            )
        return _launch(spec, prepared=prepared, out=out, run=run, resume=resume)
    with distributed.joined(world, device) as device, distributed.peers_watched(world):
        lock = run.lock() if world.main else contextlib.nullcontext()
        with lock:
            stopped = lambda signum: outcome.interrupted_before(signum, run, resume=resume)  # noqa: E731
            with outcome.stops(stopped):
                if prepared is None:
                    with world.local_first():  # a machine prepares once; its others find it
                        prepared = prepare(spec)  # a no-op when the data is prepared already
                trainer = Trainer(
                    spec, prepared, run=run, log=log, on_epoch=on_epoch, world=world,
                    device=device,
                )  # fmt: skip
            return trainer.run(resume=resume)


def _launch(spec: Spec, *, prepared: Any, out: Path | None, run: Run, resume: bool) -> TrainResult:
    """``train.nproc`` processes of this spec's run; the result read back from the run folder
    rank 0 wrote."""
    if spec.source is None:
        raise ConfigurationError(
            f"train.nproc {spec.train.nproc} starts processes that load the spec from its file, "
            "and this spec was not loaded from one: save it to a file, or train with nproc 1"
        )
    nproc = spec.train.nproc
    data = str(prepared.root) if prepared is not None else None
    try:
        distributed.launch(
            spec.source, spec.overrides, nproc, resume=resume, data=data,
            out=str(out) if out else None,
        )  # fmt: skip
    except Interrupted as stop:
        raise _stopped_group(stop.signum, run) from None
    summary = json.loads(run.summary.read_text())
    history = State.from_checkpoint(ckpt.load(run.checkpoint("last"), spec)).history
    model, _ = ckpt.load_trained(spec, _ended_with(summary), run=run)
    return TrainResult(model, history, summary.get("best_epoch"), summary.get("stopped"), run.dir)


def _ended_with(summary: dict[str, Any]) -> str:
    """The checkpoint holding the weights the group's run ended with (train.json says)."""
    weights = summary.get("weights") or {}
    return "swa" if weights.get("swa") else "best" if weights.get("restored_best") else "last"


def _stopped_group(signum: int, run: Run) -> Interrupted:
    """A distributed run stopped by Ctrl-C or SIGTERM: what its last checkpoint holds."""
    last = run.checkpoint("last")
    if not last.is_file():
        return Interrupted(signum, "no epoch had finished, no checkpoint was written")
    epoch = torch.load(last, map_location="cpu", weights_only=True).get("epoch")
    return Interrupted(signum, f"kept {last} (epoch {epoch})", resumable=True)
