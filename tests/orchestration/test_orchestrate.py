"""The stage commands' orchestration modes, and the local Prefect server they share (started
once, reused, stopped), each command a real process as dvc runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import orchestrate
from tests.train.test_loop import CONVNET


def _env(tmp_path: Path, mirror: Path, **extra: str) -> dict[str, str]:
    # nothing of the user's Prefect set-up (a PREFECT_API_URL, a profile) reaches these processes
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k != orchestrate.MODE_ENV
    }
    env.update(
        PIPELINE_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "client"),
        PIPELINE_DATA_MIRROR=str(mirror),
        PIPELINE_DATA_CACHE=str(tmp_path / "cache"),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        **extra,
    )
    return env


def _pipeline(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 180
) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - began


@pytest.fixture
def project(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch):
    """A project folder with a tiny spec; every server started under its PIPELINE_HOME is
    stopped at the end, whatever happened."""
    root = tmp_path / "project"
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "tiny.yaml").write_text(CONVNET.format(name="tiny", per_class=20, epochs=1))
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    try:
        yield root
    finally:
        server = orchestrate.read_state()
        orchestrate.stop_server()
        if server and orchestrate.pid_alive(server.pid):  # pragma: no cover - last resort
            os.killpg(server.pid, 9)


def test_off_mode_runs_the_library_functions_without_importing_prefect(project, tmp_path, mirror):
    # the DVC stages' form: prepare into a folder, train and evaluate on it
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        "codes = [main(['prepare', 'specs/tiny.yaml', '--out', 'data/prepared/tiny'])]\n"
        "codes += [main([c, 'specs/tiny.yaml', '--data', 'data/prepared/tiny'])\n"
        "          for c in ('train', 'evaluate')]\n"
        "assert codes == [0, 0, 0], codes\n"
        "assert not [m for m in sys.modules if m.startswith('prefect')], 'prefect imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
        env=_env(tmp_path, mirror, PIPELINE_ORCHESTRATION="off"),
    )
    assert done.returncode == 0, done.stderr
    assert "trained 1 epochs; best epoch 1; outputs in runs/tiny" in done.stdout
    assert "test_accuracy" in done.stdout
    assert (project / "runs" / "tiny" / "metrics.json").is_file()
    assert sorted(p.name for p in (project / "data" / "prepared").iterdir()) == ["tiny"]
    assert not (tmp_path / "home" / "prefect-server.json").exists()
    # a folder prepared for another data section is refused, in one line
    other, _ = _pipeline(
        "train",
        "specs/tiny.yaml",
        "--data",
        "data/prepared/tiny",
        "-S",
        "data.subset.train_per_class=30",
        cwd=project,
        env=_env(tmp_path, mirror, PIPELINE_ORCHESTRATION="off"),
    )
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "data/prepared/tiny holds data prepared for another data section" in other.stderr


def test_one_server_is_started_reused_by_the_next_stage_and_stopped(project, tmp_path, mirror):
    env = _env(tmp_path, mirror)
    first, first_s = _pipeline("prepare", "specs/tiny.yaml", env=env, cwd=project)
    assert first.returncode == 0, first.stderr
    assert "started a local Prefect server" in first.stderr
    assert "total" in first.stdout  # the same report as without Prefect
    state = json.loads((tmp_path / "home" / "prefect-server.json").read_text())
    assert Path(state["prefect_home"]) == tmp_path / "home" / "prefect"  # persistent home

    # the next stage (here with an unreachable PREFECT_API_URL, which auto mode passes over)
    # finds the running server: no start-up to pay
    unreachable = f"http://127.0.0.1:{orchestrate.free_port()}/api"
    second, second_s = _pipeline(
        "prepare",
        "specs/tiny.yaml",
        "--out",
        "data/prepared/tiny",
        cwd=project,
        env=env | {"PREFECT_API_URL": unreachable},
    )
    assert second.returncode == 0, second.stderr
    assert "started a local Prefect server" not in second.stderr
    assert f"{unreachable} (PREFECT_API_URL) does not answer" in second.stderr
    assert json.loads((tmp_path / "home" / "prefect-server.json").read_text()) == state
    print(f"\nprepare, starting the server: {first_s:.1f} s; reusing it: {second_s:.1f} s")
    assert second_s < first_s

    # both stage runs are flow runs on that server, named after the spec
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: state["url"]}),
        get_client(sync_client=True) as client,
    ):
        runs = client.read_flow_runs()
        flows = {client.read_flow(r.flow_id).name for r in runs}
    assert flows == {"prepare"}
    assert [(r.name, r.state.type.value) for r in runs] == [("tiny", "COMPLETED")] * 2
    assert all(r.parameters["spec"] == "specs/tiny.yaml" for r in runs)
    assert sorted(str(r.parameters.get("out")) for r in runs) == ["None", "data/prepared/tiny"]
    assert (project / "data" / "prepared" / "tiny" / "meta.json").is_file()

    # an error a user can act on, inside a flow run: one line and exit 1, as without Prefect
    (tmp_path / "empty").mkdir()
    (project / "specs" / "other.yaml").write_text(
        CONVNET.format(name="other", per_class=21, epochs=1)
    )
    failed, _ = _pipeline(
        "prepare",
        "specs/other.yaml",
        cwd=project,
        env=env | {"PIPELINE_DATA_MIRROR": str(tmp_path / "empty")},
    )
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'empty'}")

    # `pipeline server stop` stops it; two processes starting it at once start one server
    stopped, _ = _pipeline("server", "stop", env=env, cwd=project)
    assert f"stopped {state['url']}" in stopped.stdout
    assert not orchestrate.pid_alive(state["pid"])
    assert not (tmp_path / "home" / "prefect-server.json").exists()
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "server", "start"],
            env=env,
            cwd=project,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = sorted(p.communicate(timeout=120)[0] for p in starts)
    assert [o.split(":")[0] for o in outputs] == ["already running", "started"], outputs
    assert len({o.split(": ")[1].split()[0] for o in outputs}) == 1  # the same URL
    status, _ = _pipeline("server", "status", env=env, cwd=project)
    assert status.returncode == 0 and "healthy  yes" in status.stdout
    _pipeline("server", "stop", env=env, cwd=project)
    status, _ = _pipeline("server", "status", env=env, cwd=project)
    assert status.returncode == 1 and "no pipeline-managed Prefect server" in status.stdout


def test_errors_before_any_flow_run(project, tmp_path, mirror):
    env = _env(tmp_path, mirror)
    bad = project / "specs" / "bad.yaml"
    bad.write_text(CONVNET.format(name="bad", per_class=20, epochs=1).replace("epochs:", "epohcs:"))
    done, _ = _pipeline("train", str(bad), env=env, cwd=project)
    assert done.returncode == 1
    assert f"{bad}:" in done.stderr and "did you mean 'epochs'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "prefect-server.json").exists()  # no server, no flow run

    done, _ = _pipeline(
        "prepare", "specs/tiny.yaml", cwd=project, env=env | {"PIPELINE_ORCHESTRATION": "bogus"}
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "'bogus' is not one of auto, server, ephemeral, off" in done.stderr

    unreachable = f"http://127.0.0.1:{orchestrate.free_port()}/api"
    done, _ = _pipeline(
        "prepare",
        "specs/tiny.yaml",
        cwd=project,
        env=env | {"PIPELINE_ORCHESTRATION": "server", "PREFECT_API_URL": unreachable},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"error: the Prefect server at {unreachable} (PREFECT_API_URL) does not answer"
    )
