"""The search without Optuna: DVC's own grid of spec variants, queued with
``dvc exp run --queue -S 'specs/<spec>.yaml:path=a,b'`` and run by DVC's queue. Every queued
variant goes through the ``resolve`` stage first, so one the spec language rejects fails there,
with its located message in ``dvc queue logs``, and never trains."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.orchestration.test_dvc import MIN_ACCURACY, Repo
from tests.search_dvc import experiments, make_repo

REJECTED = re.compile(
    r"specs/tiny\.yaml:\d+:\d+: error: train\.batch_size: "
    r"Input should be greater than or equal to 1 \(got 0\)"
)


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    repo = make_repo(tmp_path_factory.mktemp("queue"))
    proc = repo.run(
        "dvc",
        "exp",
        "run",
        "--queue",
        "-n",
        "tiny-bs",
        "-S",
        "specs/tiny.yaml:train.batch_size=0,64",
    )
    assert "Queued experiment 'tiny-bs-1'" in proc.stdout, proc.stdout
    assert "Queued experiment 'tiny-bs-2'" in proc.stdout, proc.stdout
    # runs the queue to its end and returns 0 even when an experiment failed (its status says)
    repo.first = repo.run("dvc", "exp", "run", "--run-all", "-j", "2", check=False)
    try:
        yield repo
    finally:
        repo.run("dvc", "queue", "stop", check=False)  # no worker left behind


def test_the_queue_ran_each_variant_and_the_invalid_one_failed(queued: Repo):
    status = queued.run("dvc", "queue", "status").stdout
    assert re.search(r"tiny-bs-1\s.*\sFailed", status), status
    assert re.search(r"tiny-bs-2\s.*\sSuccess", status), status
    assert queued.run("git", "status", "--porcelain").stdout == ""  # it ran in temp folders


def test_the_valid_variant_is_an_experiment_with_its_param_and_metrics(queued: Repo):
    exp = experiments(queued)["tiny-bs-2"]
    assert exp["error"] is None, exp
    data = exp["data"]
    assert data["params"]["runs/tiny/spec.yaml"]["data"]["train"]["batch_size"] == 64
    assert data["metrics"]["runs/tiny/metrics.json"]["data"]["test_accuracy"] > MIN_ACCURACY
    assert data["metrics"]["runs/tiny/live/metrics.json"]["data"]["step"] == 0  # one epoch
    logs = queued.run("dvc", "queue", "logs", "tiny-bs-2").stdout
    assert "Running stage 'train@tiny'" in logs and "Running stage 'evaluate@tiny'" in logs


def test_the_invalid_variant_failed_at_resolve_with_the_located_message_and_never_trained(
    queued: Repo,
):
    exp = experiments(queued)["tiny-bs-1"]
    assert exp["error"] and exp["error"]["msg"] == "Experiment run failed", exp
    logs = queued.run("dvc", "queue", "logs", "tiny-bs-1").stdout
    assert REJECTED.search(logs), logs
    assert "train: {epochs: 1, batch_size: 0}" in logs  # the line, with a caret under the 0
    assert "failed to reproduce 'resolve@tiny'" in logs
    assert "Running stage 'resolve@tiny'" in logs
    for stage in ("prepare", "train", "evaluate"):
        assert f"Running stage '{stage}@tiny'" not in logs, logs
