"""``train``: the training loop over the spec's phases, with checkpoints, resume and stopping.

Around it: :mod:`pipeline.run` (the run folder, its record and files), :mod:`.live` (dvclive,
the progress bar), :mod:`.offline` (the offline-augmented set), :mod:`.params` (freezing,
parameter groups, penalties), :mod:`.diagnostics` (per-layer statistics).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import runtime
from pipeline.errors import PipelineError
from pipeline.run import Run
from pipeline.spec.spec import Spec
from pipeline.spec.train import Phase
from pipeline.train import checkpoint as ckpt
from pipeline.train import params as P
from pipeline.train.diagnostics import COLUMNS as DIAGNOSTICS_COLUMNS
from pipeline.train.diagnostics import layer_stats
from pipeline.train.live import RUN_COLUMNS, log_live, open_live, progress
from pipeline.train.metrics import RunningMetrics, spec_loss
from pipeline.train.optim import build_optimizer, clip_gradients
from pipeline.train.schedules import LRSchedule

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "train"]

Log = Callable[[str], None]


class TrainingDiverged(PipelineError):
    """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


@dataclass
class State:
    """Everything a resumed run needs besides the weights and optimizer."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    stale: int = 0
    stopped: str | None = None


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped: str | None
    run_dir: Path


def _phases(spec: Spec) -> list[Phase]:
    return list(spec.train.phases) or [Phase(name="train", epochs=spec.train.epochs)]


def _mode(monitor: str, mode: str) -> str:
    return mode if mode != "auto" else ("max" if "accuracy" in monitor else "min")


def _better(value: float, best: float | None, mode: str, delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - delta if mode == "min" else value > best + delta


class Trainer:
    """One training run of a spec. ``train()`` is the usual entry point."""

    def __init__(self, spec: Spec, prepared: Any, *, run: Run, log: Log = print) -> None:
        from pipeline.data.augment import build_augment
        from pipeline.data.loader import BatchLoader
        from pipeline.model.build import build_model
        from pipeline.train.offline import offline_set

        self.spec, self.run_folder, self.log = spec, run, log
        t = spec.train
        runtime.tune_allocator()
        self.device = runtime.pick_device(t.device)
        runtime.seed_everything(spec.seed, deterministic=t.deterministic)
        self.model = build_model(spec, device=self.device)
        P.set_trainable(P.select(self.model, t.freeze), False)
        # what each phase starts from: the layers' own trainable flags and train.freeze
        self.base_trainable = {id(p): p.requires_grad for p in self.model.parameters()}
        self.memory_format = runtime.memory_format(self.model, t.channels_last)
        if self.memory_format is not None:
            self.model = self.model.to(memory_format=self.memory_format)
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.amp = runtime.autocast_dtype(t.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.loss = spec_loss(spec)
        self.constraints = P.constraints(self.model, spec)
        common = {"device": self.device, "memory_format": self.memory_format}
        if spec.augment.mode == "offline" and spec.augment.transforms:
            x, y = offline_set(spec, prepared, log)
            self.train_loader = BatchLoader(
                x, y, t.batch_size, shuffle=True, seed=spec.seed, drop_last=t.drop_last,
                mean=prepared.mean, std=prepared.std, **common)  # fmt: skip
        else:
            self.train_loader = BatchLoader.from_prepared(
                prepared, "train", t.batch_size, shuffle=True, seed=spec.seed,
                drop_last=t.drop_last, transform=build_augment(spec.augment), **common)  # fmt: skip
        self.val_loader = (
            BatchLoader.from_prepared(prepared, "val", spec.evaluate.batch_size, **common)
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
        self.monitor, self.monitor_mode = monitor, _mode(monitor, t.checkpoint.mode)
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
        optimizer = build_optimizer(opt_spec, P.param_groups(self.model, opt_spec))
        schedule = LRSchedule(
            phase.schedule or self.spec.schedule,
            optimizer,
            steps_per_epoch=len(self.train_loader),
            epochs=phase.epochs,
        )
        return optimizer, schedule

    # ---- one epoch ----------------------------------------------------------------------

    def _train_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, schedule: LRSchedule
    ) -> dict[str, float]:
        self.model.train()
        self.train_loader.set_epoch(epoch)
        metrics = RunningMetrics(self.spec.train.top_k, self.device)
        reg_total = torch.zeros((), device=self.device)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        check_every = 1 if self.device.type == "cpu" else 25
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp)
            if self.amp
            else contextlib.nullcontext()
        )
        for step, (x, y) in enumerate(progress(self.train_loader, f"epoch {epoch + 1}")):
            with autocast:
                logits = self.forward(x)
                loss = self.loss(logits, y)
            total = loss
            reg = P.penalty(self.constraints)
            if reg is not None:
                total = loss + reg
                reg_total += reg.detach()
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.opt_spec.clip_value or self.opt_spec.clip_norm:
                self.scaler.unscale_(optimizer)
                clip_gradients(self.opt_spec, params)
            self.scaler.step(optimizer)
            self.scaler.update()
            P.apply_max_norm(self.constraints)
            schedule.after_step()
            metrics.update(logits.float(), y, loss.float())
            bad |= ~torch.isfinite(loss.detach())
            if step % check_every == 0 and bad.item():
                raise TrainingDiverged(
                    f"the loss became NaN/inf at epoch {epoch + 1}, step {step + 1}"
                    + ("" if check_every == 1 else f" (checked every {check_every} steps)")
                    + ". The learning rate may be too high: lower optimizer.lr, add "
                    "clip_norm, or check the data. The last good checkpoint is kept."
                )
        if bad.item():
            raise TrainingDiverged(f"the loss became NaN/inf during epoch {epoch + 1}")
        out = metrics.compute()
        if self.constraints:
            out["reg_loss"] = reg_total.item() / max(len(self.train_loader), 1)
        return out

    @torch.no_grad()
    def evaluate(self, loader: Any) -> dict[str, float]:
        self.model.eval()
        metrics = RunningMetrics(self.spec.train.top_k, self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp)
            if self.amp
            else contextlib.nullcontext()
        )
        for x, y in loader:
            with autocast:
                logits = self.forward(x)
            metrics.update(logits.float(), y, self.loss(logits.float(), y))
        return metrics.compute()

    # ---- checkpoints --------------------------------------------------------------------

    def _save(self, name: str, optimizer: Any, schedule: Any, phase_index: int) -> None:
        s = self.state
        ckpt.save(self.run_folder.checkpoint(name), self.spec, {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "phase": phase_index,
            "epoch": s.epoch,
            "history": json.dumps(s.history),
            "best": s.best, "best_epoch": s.best_epoch, "stale": s.stale,
            "rng": torch.get_rng_state(),
            "run_id": self.run_id,
        })  # fmt: skip

    def _write_history(self) -> None:
        if self.state.history:
            self.run_folder.write_csv(self.run_folder.history, self.state.history)

    # ---- the run ------------------------------------------------------------------------

    def run(self, *, resume: bool = False) -> TrainResult:
        run = self.run_folder
        t = self.spec.train
        es = t.early_stopping
        es_mode = _mode(es.monitor, es.mode) if es else "min"
        es_best: float | None = None
        start_phase, resume_state = 0, None
        if resume and run.checkpoint("last").is_file():
            resume_state = ckpt.load(run.checkpoint("last"), self.spec, map_location=self.device)
            self.model.load_state_dict(resume_state["model"])
            s = self.state
            s.epoch, s.best, s.best_epoch, s.stale = (
                resume_state["epoch"],
                resume_state["best"],
                resume_state["best_epoch"],
                resume_state["stale"],
            )
            s.history = json.loads(resume_state["history"])
            start_phase = resume_state["phase"]
            torch.set_rng_state(resume_state["rng"].cpu())
            self.log(f"resuming {self.spec.name} after epoch {s.epoch}")
        record = run.start(
            self.spec,
            resume=resume_state is not None,
            device=runtime.describe_device(self.device),
            run_id=resume_state.get("run_id") if resume_state is not None else None,
            log=self.log,
        )
        self.run_id = record["id"]
        self.live = open_live(run.live, self.state.history)
        phases = _phases(self.spec)
        phase_start = sum(p.epochs for p in phases[:start_phase])
        for index in range(start_phase, len(phases)):
            phase = phases[index]
            optimizer, schedule = self._enter(phase)
            if resume_state is not None and index == start_phase:
                optimizer.load_state_dict(resume_state["optimizer"])
                schedule.load_state_dict(resume_state["schedule"])
            for epoch in range(max(self.state.epoch, phase_start), phase_start + phase.epochs):
                row = self._epoch(epoch, phase, index, optimizer, schedule)
                if es is not None and es.monitor in row:
                    if _better(row[es.monitor], es_best, es_mode, es.min_delta):
                        es_best, self.state.stale = row[es.monitor], 0
                    else:
                        self.state.stale += 1
                    if self.state.stale > es.patience:
                        self.state.stopped = (
                            f"early stopping: {es.monitor} did not improve for {es.patience} epochs"
                        )
                        break
            phase_start += phase.epochs
            if self.state.stopped:
                break
        self.live.end()  # each epoch's files are already written (next_step); end() closes
        if self.state.stopped:
            self.log(self.state.stopped)
        best_path = run.checkpoint("best")
        if es is not None and es.restore_best and best_path.is_file():
            self.model.load_state_dict(
                ckpt.load(best_path, self.spec, map_location=self.device)["model"]
            )
        self._write_summary()
        return TrainResult(
            self.model, self.state.history, self.state.best_epoch, self.state.stopped, run.dir
        )

    def _epoch(
        self, epoch: int, phase: Phase, index: int, optimizer: Any, schedule: LRSchedule
    ) -> dict[str, Any]:
        began = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        try:
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "phase": phase.name or str(index + 1),
                "lr": lr,
                **self._train_epoch(epoch, optimizer, schedule),
            }
        except TrainingDiverged:
            self._write_history()
            raise
        train_s = time.perf_counter() - began
        if self.val_loader is not None:
            row.update({f"val_{k}": v for k, v in self.evaluate(self.val_loader).items()})
        row["time_s"] = round(time.perf_counter() - began, 3)
        row["train_images_per_s"] = round(self.train_loader.n / train_s, 1)
        schedule.after_epoch(row)
        if self.spec.train.diagnostics:
            self._diagnostics(epoch)
        s = self.state
        s.epoch = epoch + 1
        s.history.append(row)
        if self.monitor in row and _better(row[self.monitor], s.best, self.monitor_mode):
            s.best, s.best_epoch = row[self.monitor], epoch + 1
            if self.spec.train.checkpoint.best:
                self._save("best", optimizer, schedule, index)
        self._save("last", optimizer, schedule, index)  # always: --resume needs it
        self._write_history()
        log_live(self.live, row)
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in row.items()
            if isinstance(v, float) and k not in RUN_COLUMNS and k != "lr"
        )
        self.log(
            f"epoch {epoch + 1} [{row['phase']}] lr {lr:.3g} {shown} "
            f"({row['time_s']:.1f} s, {row['train_images_per_s']:,.0f} img/s)"
        )
        return row

    def _diagnostics(self, epoch: int) -> None:
        """Per-layer activation/gradient statistics on one training batch, appended to
        diagnostics.csv (the seeds' vanishing/exploding-gradient and dead-ReLU checks)."""
        rows = layer_stats(self.model, self.loss, next(iter(self.train_loader)))
        self.run_folder.write_csv(
            self.run_folder.diagnostics,
            ({"epoch": epoch + 1, **r} for r in rows),
            columns=DIAGNOSTICS_COLUMNS,
            append=epoch > 0,
        )

    def _write_summary(self) -> None:
        s = self.state
        summary = {
            "run_id": self.run_id,
            "epochs": s.epoch,
            "best_epoch": s.best_epoch,
            "monitor": self.monitor,
            "best": s.best,
            "stopped": s.stopped,
        }  # what it ran on is in the run's record (run.json), under the same run_id
        if s.history:
            summary["last"] = s.history[-1]
        self.run_folder.write_json(self.run_folder.summary, summary)


def train(
    spec: Spec,
    *,
    prepared: Any = None,
    out: Path | None = None,
    resume: bool = False,
    log: Log = print,
) -> TrainResult:
    """Train the spec's model on its prepared data; writes checkpoints and history under
    ``runs/<name>`` (or ``out``), first recording the run (:meth:`Run.start`: a fresh run
    replaces the folder's earlier one). Raises TrainingDiverged with a clear message on
    NaN/inf."""
    from pipeline.data.prepare import prepare

    if prepared is None:
        prepared = prepare(spec)  # a no-op when the data section was prepared already
    trainer = Trainer(spec, prepared, run=Run(out) if out else Run.of(spec), log=log)
    return trainer.run(resume=resume)
