"""One run in several processes (DDP, gloo on CPU, torchrun's launcher), on real MNIST subsets.

Every distributed run here is real: ``train.nproc`` > 1 starts that many ``pipeline train``
processes that join one process group. What they must give:

- after one epoch, the weights one process gets with the same global batch (a model without
  batch norm or dropout, so gradient averaging over the ranks is the only difference), also
  where the last batch splits unevenly between three ranks;
- with batch norm (each rank normalizing its own share), the accuracy one process reaches;
- a checkpoint of 2 ranks resumed by 1 process continues as one process would have;
- a rank killed mid-run ends the run with an error naming it, within seconds, not a hang;
- a rank's own error (sync_batch_norm on CPU) reported by the launcher, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.data.loader import BatchLoader
from pipeline.spec import load_spec
from pipeline.stages import evaluate
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import train

NET = """\
name: {name}
seed: 1
data:
  dataset: mnist
  subset: {{train_per_class: 100, test_per_class: 20}}
  validation: {{fraction: 0.2}}
model:
  layers:
    - {{type: conv2d, filters: 8, kernel_size: 3, activation: relu}}
{bn}    - {{type: max_pool2d}}
    - {{type: flatten}}
    - {{type: dense, units: 10, activation: softmax}}
optimizer: {{type: sgd, lr: 0.05, momentum: 0.9}}
train: {{epochs: {epochs}, batch_size: {batch}}}
"""
BN = "    - {type: batch_norm}\n"
TIMING = ("time_s", "train_images_per_s")


@pytest.fixture
def workdir(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path


def spec_file(root: Path, name: str, *, epochs=1, batch=32, bn=False) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(NET.format(name=name, epochs=epochs, batch=batch, bn=BN if bn else ""))
    return path


def quiet(_: str) -> None:
    pass


def weights(run_dir: Path, spec) -> dict[str, torch.Tensor]:
    return ckpt.load(run_dir / "checkpoints" / "last.pt", spec)["model"]


def no_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=2e-5, rtol=1e-4), key


# ---- the loader's shards (no processes) ------------------------------------------------------


def test_the_ranks_shares_make_up_each_global_batch_exactly():
    x = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1).numpy()
    y = torch.arange(103).numpy()
    one = BatchLoader(x, y, 12, shuffle=True, seed=5)
    ranks = [BatchLoader(x, y, 12, shuffle=True, seed=5, shard=(r, 3)) for r in range(3)]
    whole = [set(b.tolist()) for _, b in one]
    parts = [[b.tolist() for _, b in loader] for loader in ranks]
    # 103 = 8 * 12 + 7: the 7 left split 3/2/2, each rank has 9 batches
    assert [len(p) for p in parts] == [9, 9, 9] and len(one) == len(ranks[0]) == 9
    for k, batch in enumerate(whole):
        shares = [p[k] for p in parts]
        assert set().union(*shares) == batch, k
        assert sum(len(s) for s in shares) == len(batch)
    assert [len(p[-1]) for p in parts] == [3, 2, 2]
    assert [ranks[0].global_batch(k) for k in (0, 8)] == [12, 7]
    # the images are gathered from the array (a memmap in a run), row by row
    xs, ys = next(iter(ranks[1]))
    assert (xs.view(-1) * 255).round().long().tolist() == ys.tolist()


def test_a_last_batch_smaller_than_the_ranks_is_left_out():
    x = torch.zeros(13, 1, 1, 1, dtype=torch.uint8).numpy()
    y = torch.arange(13).numpy()
    # 13 = 3 * 4 + 1: one sample cannot be shared by 2 ranks
    loader = BatchLoader(x, y, 4, shuffle=True, shard=(1, 2))
    assert len(loader) == 3 and len(list(loader)) == 3
    assert len(BatchLoader(x, y, 4, shuffle=True)) == 4


# ---- real runs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("nproc", "batch"), [(2, 32), (3, 30)])
def test_an_epoch_on_n_processes_gives_the_weights_of_one(workdir, nproc, batch):
    # 800 training images: batch 32 leaves 0 over, batch 30 leaves 20 (7/7/6 on 3 ranks,
    # each share weighed by its size)
    one_file = spec_file(workdir, f"one{nproc}", batch=batch)
    many_file = spec_file(workdir, f"many{nproc}", batch=batch)
    one = train(load_spec(one_file), log=quiet)
    many_spec = load_spec(many_file, [f"train.nproc={nproc}"])
    many = train(many_spec, log=quiet)
    close(weights(one.run_dir, many_spec), weights(many.run_dir, many_spec))
    # the metrics are over every rank's part, so the histories agree too
    a, b = no_timing(one.history)[0], no_timing(many.history)[0]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-4), key
    record = (workdir / "runs" / f"many{nproc}" / "train.json").read_text()
    assert f'"world_size": {nproc}' in record


def test_batch_norm_on_two_processes_reaches_the_accuracy_of_one(workdir):
    one = train(load_spec(spec_file(workdir, "bn1", epochs=3, bn=True)), log=quiet)
    two_spec = load_spec(spec_file(workdir, "bn2", epochs=3, bn=True), ["train.nproc=2"])
    two = train(two_spec, log=quiet)
    acc1, acc2 = one.history[-1]["val_accuracy"], two.history[-1]["val_accuracy"]
    assert acc1 >= 0.85, one.history
    assert acc2 >= acc1 - 0.03, (acc1, acc2)
    # the 2-rank checkpoint loads in single-process evaluate
    metrics = evaluate(two_spec, log=quiet)
    assert metrics["test_accuracy"] >= 0.8


def test_a_two_rank_checkpoint_resumed_by_one_process_goes_on_as_one_would(workdir):
    full = train(load_spec(spec_file(workdir, "full", epochs=2)), log=quiet)
    path = spec_file(workdir, "split", epochs=2)
    first = train(load_spec(path, ["train.epochs=1", "train.nproc=2"]), log=quiet)
    assert len(first.history) == 1
    resumed = train(load_spec(path), resume=True, log=quiet)  # nproc 1, 2 epochs
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    spec = load_spec(path)
    close(weights(full.run_dir, spec), weights(resumed.run_dir, spec))
    a, b = no_timing(full.history), no_timing(resumed.history)
    assert [r["val_accuracy"] for r in a] == pytest.approx([r["val_accuracy"] for r in b])


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PIPELINE_ORCHESTRATION": "off"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _rank_pid(parent: int, rank: int, deadline: float) -> int:
    """The pid of the rank ``rank`` among the processes under ``parent`` (its environment)."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and int(stat[1]) == parent:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} under {parent}")


def test_a_rank_killed_mid_run_ends_the_run_with_its_error_not_a_hang(workdir):
    path = spec_file(workdir, "killed", epochs=2000)
    proc = _cli(str(path), "--nproc", "2", cwd=workdir)
    history = workdir / "runs" / "killed" / "history.csv"
    deadline = time.monotonic() + 120
    while not history.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert history.is_file(), proc.communicate()
    os.kill(_rank_pid(proc.pid, 1, deadline), signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=90)
    took = time.monotonic() - killed
    assert proc.returncode == 1, err
    assert took < 60, took
    assert "rank 1: it was killed by SIGKILL" in err
    assert "Traceback" not in err
    # rank 0 saved what it had: the run resumes from it
    assert (workdir / "runs" / "killed" / "checkpoints" / "last.pt").is_file()


def test_a_ranks_own_error_is_what_the_launcher_reports(workdir):
    path = spec_file(workdir, "syncbn", bn=True)
    proc = _cli(str(path), "--nproc", "2", "-S", "train.sync_batch_norm=true", cwd=workdir)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "the distributed run of 2 processes failed: rank" in err
    assert "sync_batch_norm needs CUDA" in err
    assert "Traceback" not in err
