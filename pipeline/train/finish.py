"""The end of a run with ``train.swa``: the average gets its batch-norm statistics, is validated,
saved as ``checkpoints/swa.pt`` and becomes the weights the trained model ends with."""

from __future__ import annotations

from typing import Any

from pipeline.train import checkpoint as ckpt


def finish_swa(t: Any) -> dict[str, Any] | None:
    """``t``: the :class:`~pipeline.train.loop.Trainer` (not imported: it imports this). What
    train.json records of the average (epochs averaged, its validation metrics), or
    None, said, when the run ended before ``swa.start_epoch``. Every rank takes part (the
    validation is a collective); rank 0 writes."""
    swa = t.swa
    assert swa is not None
    path = t.run_folder.checkpoint("swa")
    if swa.averaged == 0:
        t.log(
            f"swa: the run ended at epoch {t.state.epoch}, before swa.start_epoch "
            f"{swa.cfg.start_epoch}: nothing was averaged, no {path}"
        )
        return None
    model = swa.finish(t.train_loader)
    out: dict[str, Any] = {"averaged_epochs": swa.averaged, "start_epoch": swa.cfg.start_epoch}
    if t.val_loader is not None:
        out.update({f"val_{k}": v for k, v in t.evaluate(t.val_loader, model).items()})
    if t.main:
        ckpt.save(path, t.spec, {
            "model": model.state_dict(), "epoch": t.state.epoch, "run_id": t.run_id,
            "averaged_epochs": swa.averaged,
        })  # fmt: skip
    t.model.load_state_dict(model.state_dict())
    shown = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float))
    t.log(f"swa: the average of {swa.averaged} epochs {shown}; saved to {path}")
    return out
