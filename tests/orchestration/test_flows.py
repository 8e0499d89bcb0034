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
    metrics = experiment_flow(str(spec_file), ["train.epochs=1"])
    assert metrics["test_accuracy"] > 0.8
    saved = json.loads((tmp_path / "runs" / "flow" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    artifact = Artifact.get(_artifact_key(load_spec(spec_file)))
    assert artifact is not None and "Total params" in artifact.data
    assert "test_accuracy" in artifact.data


def test_a_bad_override_fails_the_flow_with_the_located_error(prefect_server, tmp_path: Path):
    from pipeline.flows import prepare_flow
    from pipeline.spec import SpecError

    spec_file = tmp_path / "flow.yaml"
    spec_file.write_text(CONVNET.format(name="flow", per_class=200, epochs=1))
    with pytest.raises(SpecError, match="did you mean 'train'"):
        prepare_flow(str(spec_file), ["trian.epochs=1"])
