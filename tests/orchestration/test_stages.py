"""The stage functions and the one dispatch: ``off`` calls a stage here, any other mode runs its
flow, and both give the same result."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import stages
from pipeline.orchestrate import call
from tests.train.test_loop import CONVNET

TIMINGS = {"time_s", "train_images_per_s"}  # the only fields of a run that differ run to run


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_every_stage_has_a_flow_named_after_it():
    from pipeline.flows import FLOWS, flow_of

    assert set(FLOWS) == set(stages.STAGES)
    assert [flow_of(s).name for s in stages.STAGES] == [s.__name__ for s in stages.STAGES]
    assert {"prepare", "train", "evaluate", "experiment"} <= {s.__name__ for s in stages.STAGES}


def test_off_and_a_flow_run_give_the_same_result_through_the_dispatch(
    prefect_server, tmp_path: Path, mirror, monkeypatch
):
    from prefect.client.orchestration import get_client

    from pipeline.spec import load_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    spec_file = tmp_path / "same.yaml"
    spec_file.write_text(CONVNET.format(name="same", per_class=20, epochs=1))
    spec = load_spec(spec_file)
    data = Path("data") / "prepared" / "same"

    def both(stage, **options):
        monkeypatch.setenv("PIPELINE_ORCHESTRATION", "off")
        lines: list[str] = []
        off = call(stage, spec, source=spec_file, log=lines.append, **options)
        assert lines, "off: the stage's log reaches the caller"
        monkeypatch.setenv("PIPELINE_ORCHESTRATION", "server")
        return off, call(stage, spec, source=spec_file, **options)

    assert both(stages.prepare, out=data) == (str(data), str(data))
    off, flow = both(stages.train, data=data)
    assert {k: v for k, v in off.items() if k != "last"} == {
        k: v for k, v in flow.items() if k != "last"
    }
    assert off["run_dir"] == "runs/same" and set(off["last"]) == set(flow["last"])
    assert {k: v for k, v in off["last"].items() if k not in TIMINGS} == {
        k: v for k, v in flow["last"].items() if k not in TIMINGS
    }
    off, flow = both(stages.evaluate, data=data)
    assert off == flow and off["test_accuracy"] > 0

    with get_client(sync_client=True) as client:  # the second call of each was a flow run
        runs = client.read_flow_runs()
        names = sorted(client.read_flow(r.flow_id).name for r in runs)
    assert names == ["evaluate", "prepare", "train"]
    assert all(r.name == "same" and r.state.is_completed() for r in runs)


def test_off_runs_the_experiment_as_the_three_stages_in_a_row(tmp_path: Path, mirror, monkeypatch):
    from pipeline.spec import load_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELINE_ORCHESTRATION", "off")
    spec_file = tmp_path / "row.yaml"
    spec_file.write_text(CONVNET.format(name="row", per_class=20, epochs=1))
    lines: list[str] = []
    metrics = call(
        stages.experiment, load_spec(spec_file), source=spec_file, data="data/row", log=lines.append
    )
    assert (tmp_path / "data" / "row" / "meta.json").is_file()
    assert (tmp_path / "runs" / "row" / "metrics.json").is_file()
    assert metrics == stages.evaluate(load_spec(spec_file), data="data/row", log=lines.append)
    assert any("prepared data/row" in line for line in lines)
