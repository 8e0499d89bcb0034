"""The progress bar shows the running loss and accuracy, computed only every N batches."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from pipeline.train.live import progress
from pipeline.train.metrics import RunningMetrics


def test_the_bar_shows_the_running_loss_every_n_batches():
    metrics = RunningMetrics([], torch.device("cpu"))
    calls: list[int] = []

    def status() -> str:
        calls.append(metrics.count)
        return metrics.running()

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    batches = [(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))] * 10
    for logits, y in progress(batches, "epoch 1", status, every=4, console=console):
        logits = logits.clone()
        logits[torch.arange(4), y] = 5.0  # every prediction right
        metrics.update(logits, y, torch.nn.functional.cross_entropy(logits, y))
    assert calls == [16, 32, 40]  # batches 4, 8 and the last: no sync in between
    loss = torch.nn.functional.cross_entropy(torch.tensor([[5.0, 0, 0]]), torch.tensor([0]))
    assert metrics.running() == f"loss {loss.item():.4f} acc 1.0000"
    assert "acc 1.0000" in out.getvalue()


def test_without_a_terminal_the_loader_is_returned_as_it_is(monkeypatch):
    monkeypatch.setenv("CI", "1")
    batches = [1, 2, 3]
    assert progress(batches, "epoch 1", lambda: "never") is batches
