"""The Prefect flows under a real (temporary) Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.test_loop import CONVNET


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_experiment_flow_writes_the_stage_outputs_and_an_artifact(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    from prefect.artifacts import Artifact

    from pipeline.flows import _artifact_key, experiment_flow
    from pipeline.spec import load_spec

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text(CONVNET.format(name="flow", per_class=200, epochs=1))
    # data=: prepare into that folder (as dvc.yaml's prepare stage does), train and evaluate on it
    metrics = experiment_flow(str(spec_file), ["train.epochs=1"], data="data/prepared/flow")
    assert metrics["test_accuracy"] > 0.8
    assert [p.name for p in (tmp_path / "data" / "prepared").iterdir()] == ["flow"]
    saved = json.loads((tmp_path / "runs" / "flow" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    artifact = Artifact.get(_artifact_key(load_spec(spec_file)))
    assert artifact is not None and "Total params" in artifact.data
    assert "test_accuracy" in artifact.data and "| last epoch |" in artifact.data


def test_train_flow_publishes_the_summary_and_the_last_epoch(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    from prefect.artifacts import Artifact

    from pipeline.flows import _artifact_key, train_flow
    from pipeline.spec import load_spec

    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "trained.yaml"
    spec_file.write_text(CONVNET.format(name="trained", per_class=20, epochs=1))
    trained = train_flow(str(spec_file))
    assert trained["epochs"] == 1 and (tmp_path / "runs" / "trained" / "history.csv").is_file()
    artifact = Artifact.get(_artifact_key(load_spec(spec_file)))
    assert artifact is not None and "Total params" in artifact.data
    val = f"| val_accuracy | {trained['last']['val_accuracy']:.4g} |"
    assert val in artifact.data and "Test metrics" not in artifact.data


def test_the_train_flow_runs_a_distributed_run_from_the_same_setting(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    from pipeline.flows import train_flow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec_file = tmp_path / "ddp.yaml"
    spec_file.write_text(CONVNET.format(name="ddp", per_class=20, epochs=1))
    trained = train_flow(str(spec_file), ["train.nproc=2"])  # a deployment's parameters
    assert trained["epochs"] == 1
    record = json.loads((tmp_path / "runs" / "ddp" / "train.json").read_text())
    assert record["world_size"] == 2
    run = json.loads((tmp_path / "runs" / "ddp" / "run.json").read_text())
    assert run["device"]["backend"] == "gloo" and run["overrides"] == ["train.nproc=2"]


def test_a_bad_override_fails_the_flow_with_the_located_error(prefect_server, tmp_path: Path):
    from pipeline.flows import prepare_flow
    from pipeline.spec import SpecError

    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text(CONVNET.format(name="flow", per_class=200, epochs=1))
    with pytest.raises(SpecError, match="did you mean 'train'"):
        prepare_flow(str(spec_file), ["trian.epochs=1"])


def test_an_inline_spec_is_validated_by_the_same_loader(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    import yaml

    from pipeline.flows import prepare_flow
    from pipeline.spec import SpecError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    raw = yaml.safe_load(CONVNET.format(name="inline", per_class=20, epochs=1))
    root = prepare_flow(raw, ["data.subset.test_per_class=10"])
    meta = json.loads((Path(root) / "meta.json").read_text())
    assert sum(meta["counts"]["test"].values()) == 100
    raw["train"]["epohcs"] = 2
    with pytest.raises(SpecError, match=r"<inline spec>:\d+:\d+: error: train.epohcs"):
        prepare_flow(raw, [])


def test_prepare_is_cached_on_the_data_section_and_force_refreshes(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    from prefect import flow

    from pipeline.flows import _spec, prepare_task

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec_file = tmp_path / "cached.yaml"
    spec_file.write_text(CONVNET.format(name="cached", per_class=20, epochs=1))

    @flow
    def states(force: bool = False) -> list[str]:
        s = _spec(str(spec_file), [])
        names = [prepare_task(s, return_state=True).name for _ in range(3)]
        # a section other than data (or seed) keeps the key
        other = _spec(str(spec_file), ["train.epochs=3"])
        names.append(prepare_task(other, return_state=True).name)
        if force:
            task = prepare_task.with_options(refresh_cache=True)
            names.append(task(s, force=True, return_state=True).name)
        return names

    # not prepared yet: no key; prepared: a key, stored on the second call, a hit on the third;
    # force (pipeline prepare --force) runs whatever the cache holds
    assert states(force=True) == ["Completed", "Completed", "Cached", "Cached", "Completed"]
    # the forced run wrote a fresh folder: never answered from the old folder's entry
    assert states() == ["Completed", "Cached", "Cached", "Cached"]
    # a folder removed is never answered from the cache
    for meta in (tmp_path / "data" / "prepared").glob("*/meta.json"):
        meta.unlink()
    assert states()[0] == "Completed"


def test_a_missing_data_file_fails_at_once_without_retries(
    prefect_server, tmp_path: Path, monkeypatch
):
    import time

    from pipeline.data.sources import DataError
    from pipeline.flows import prepare_flow

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec_file = tmp_path / "nodata.yaml"
    spec_file.write_text(CONVNET.format(name="nodata", per_class=20, epochs=1))
    began = time.monotonic()
    with pytest.raises(DataError, match="is missing"):
        prepare_flow(str(spec_file), [])
    assert time.monotonic() - began < 5  # the first retry would wait 5 s
