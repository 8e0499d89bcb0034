"""Deployments against a real Prefect server on loopback with a real process worker: both ways
of deploying (`pipeline deploy`, `prefect deploy` with the project's prefect.yaml), runs
submitted with a spec and overrides, their outputs where dvc expects them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.orchestrate.server import free_port, healthy
from tests.train.test_loop import CONVNET

REPO = Path(__file__).resolve().parents[2]
POOL = "pipeline-local"


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process started in its own session, with everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def server(tmp_path: Path):
    """`prefect server start` on a free loopback port, SQLite in a temp PREFECT_HOME; the
    environment its clients need."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PIPELINE_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not healthy(url):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not start in 90 s"
            time.sleep(0.2)
        yield env | {"PREFECT_API_URL": url}
    finally:
        _stop(proc)
        log.close()


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_deployment_runs_on_a_process_worker_and_writes_where_dvc_expects(
    server, tmp_path: Path, mirror: Path
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = server | {
        "PIPELINE_DATA_MIRROR": str(mirror),
        "PIPELINE_DATA_CACHE": str(tmp_path / "cache"),
    }
    prefect = [sys.executable, "-m", "prefect"]
    # two projects: one deployed by `pipeline deploy` (the flow from the installed package),
    # one by `prefect deploy` from the project's prefect.yaml (the flow from pipeline/flows.py)
    projects = {"cli": tmp_path / "by-cli", "local": tmp_path / "by-yaml"}
    for name, root in projects.items():
        (root / "specs").mkdir(parents=True)
        (root / "specs" / "tiny.yaml").write_text(
            CONVNET.format(name=f"deployed-{name}", per_class=200, epochs=2)
        )
    _run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "deploy",
            "--dir",
            str(projects["cli"]),
            "--name",
            "cli",
            "--pool",
            POOL,
        ],
        env | {"PIPELINE_ORCHESTRATION": "server"},
        cwd=tmp_path,
    )
    shutil.copy(REPO / "prefect.yaml", projects["local"] / "prefect.yaml")
    (projects["local"] / "pipeline").symlink_to(REPO / "pipeline")
    _run([*prefect, "--no-prompt", "deploy", "--all"], env, cwd=projects["local"])

    ids = {}
    for name in projects:
        out = _run(
            [
                *prefect,
                "deployment",
                "run",
                f"experiment/{name}",
                "--param",
                "spec=specs/tiny.yaml",
                "--param",
                'overrides=["train.epochs=1"]',
            ],
            env,
            cwd=tmp_path,
        )
        ids[name] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    # a caller naming a spec file outside the worker's project: refused unread, so its text
    # (a broken YAML line an error would quote) never reaches the run's state on the server
    outside = tmp_path / "elsewhere" / "secret.yaml"
    outside.parent.mkdir()
    outside.write_text("name: x\ntoken: SECRET-7f3a [\n")
    out = _run(
        [*prefect, "deployment", "run", "experiment/cli", "--param", f"spec={outside}"],
        env,
        cwd=tmp_path,
    )
    ids["outside"] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    # the worker starts elsewhere: only the deployments' pull steps put the runs in the projects
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen(
        [*prefect, "worker", "start", "--pool", POOL],
        cwd=tmp_path,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env | {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
    )
    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: server["PREFECT_API_URL"]}),
            get_client(sync_client=True) as client,
        ):
            deadline = time.monotonic() + 240
            while True:
                runs = {n: client.read_flow_run(i) for n, i in ids.items()}
                if all(r.state and r.state.is_final() for r in runs.values()):
                    break
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, {n: r.state for n, r in runs.items()}
                time.sleep(1)
            deployments = {n: client.read_deployment_by_name(f"experiment/{n}") for n in projects}
            artifacts = client.read_artifacts()
    finally:
        _stop(worker)
        worker_log.close()
    log = (tmp_path / "worker.log").read_text()
    refused = runs.pop("outside")
    assert refused.state.is_failed(), refused.state
    assert "is outside the folders a spec may name" in refused.state.message
    assert "SECRET" not in refused.state.message and "SECRET" not in log
    for name, root in projects.items():
        assert runs[name].state.is_completed(), f"{runs[name].state}\n{log[-3000:]}"
        assert runs[name].parameters == {"spec": "specs/tiny.yaml", "overrides": ["train.epochs=1"]}
        metrics = json.loads((root / "runs" / f"deployed-{name}" / "metrics.json").read_text())
        assert metrics["test_accuracy"] > 0.8
        history = (root / "runs" / f"deployed-{name}" / "history.csv").read_text().splitlines()
        assert len(history) == 2  # the override (1 epoch, the spec says 2) reached the run
        step = deployments[name].pull_steps[0]["prefect.deployments.steps.set_working_directory"]
        assert Path(step["directory"]).resolve() == root.resolve()
        assert any(
            a.flow_run_id == runs[name].id
            and a.type == "markdown"
            and "test_accuracy" in a.data
            and "Total params" in a.data
            for a in artifacts
        )
    assert deployments["local"].entrypoint == "pipeline/flows.py:experiment_flow"
    assert deployments["cli"].entrypoint == "pipeline.flows.experiment_flow"
