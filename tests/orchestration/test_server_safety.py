"""The pipeline-managed Prefect server when things go wrong, for real: a pid in the state file
that another process now has, a corrupted state file with two starts at once, a stage process
SIGKILLed in the middle of its flow run, and the server stopped under a running stage.

The tests share one server (one PIPELINE_HOME, ``server`` starts it when it is not running);
every ``prefect server start`` on that home is killed at the end, whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.orchestrate import identity
from pipeline.orchestrate.mode import OrchestrationError
from pipeline.orchestrate.server import ensure_server, free_port
from tests.conftest import MIRROR
from tests.orchestration.test_dvc import _require_mirror
from tests.orchestration.test_orchestrate import _env, _pipeline
from tests.train.test_loop import CONVNET

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").is_file(), reason="reads processes through /proc"
)


@dataclass
class Home:
    root: Path  # the project folder
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return Path(self.env["PIPELINE_HOME"])

    @property
    def state_file(self) -> Path:
        return self.home / "prefect-server.json"

    def pipeline(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return _pipeline(*args, env=self.env, cwd=self.root, timeout=timeout)[0]

    def stage(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """A stage command running in the background (its own process group), stderr in
        ``log``."""
        with open(log, "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", *args],
                env=self.env,
                cwd=self.root,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )


def servers(prefect_home: Path) -> list[int]:
    """Every `prefect server start` process whose PREFECT_HOME is ``prefect_home``, as /proc
    shows them (read here, not through the code under test)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        at = argv.index(b"prefect") + 1 if b"prefect" in argv else 0
        serving = at and argv[at : at + 2] == [b"server", b"start"]
        if serving and f"PREFECT_HOME={prefect_home}".encode() in env:
            found.append(int(proc.name))
    return sorted(found)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    _require_mirror()
    tmp = tmp_path_factory.mktemp("safety")
    root = tmp / "project"
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "tiny.yaml").write_text(CONVNET.format(name="tiny", per_class=20, epochs=1))
    # a stage that trains for a while (about 0.1 s an epoch): 500 images, 100 to validate
    slow = CONVNET.replace("validation: {{fraction: 0.1}}", "validation: {{first: 100}}")
    (root / "specs" / "slow.yaml").write_text(slow.format(name="slow", per_class=50, epochs=300))
    h = Home(root, _env(tmp, MIRROR))
    try:
        yield h
    finally:
        h.pipeline("server", "stop", timeout=60)
        for pid in servers(h.home / "prefect"):  # whatever a failed test left behind
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def server(shared: Home) -> dict[str, Any]:
    """The shared server, running (started when it is not); its state file's record."""
    done = shared.pipeline("server", "start")
    assert done.returncode == 0, done.stderr
    return json.loads(shared.state_file.read_text())


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process with "prefect" in its command line, leading its own process group
    (as a `prefect worker` someone started in a terminal does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "prefect", "worker", "start"],
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _plant(state_file: Path, pid: int, prefect_home: Path) -> None:
    """A state file naming ``pid``, in the fields every version writes (no token: a record
    from before tokens, which is matched on the command line and PREFECT_HOME instead)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(
        json.dumps(
            {
                "pid": pid,
                "url": f"http://127.0.0.1:{free_port()}/api",
                "prefect_home": str(prefect_home),
                "log": str(state_file.parent / "prefect-server.log"),
                "started": time.time(),
            }
        )
    )


def test_a_recorded_pid_that_another_process_has_is_never_signalled(
    shared: Home, server: dict[str, Any], bystander: subprocess.Popen[bytes], tmp_path: Path
):
    # stop, in a home whose state file names the bystander's pid (no server there at all)
    other = Home(shared.root, shared.env | {"PIPELINE_HOME": str(tmp_path / "other")})
    _plant(other.state_file, bystander.pid, other.home / "prefect")
    stopped = other.pipeline("server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert bystander.poll() is None, "the unrelated process was killed"
    assert stopped.stdout.strip() == "no server was running"
    assert f"pid {bystander.pid} in {other.state_file} is not the pipeline's" in stopped.stderr
    assert not other.state_file.exists()

    # start, in the shared home: the bystander is left alone, the running server found again
    _plant(shared.state_file, bystander.pid, shared.home / "prefect")
    started = shared.pipeline("server", "start")
    assert started.returncode == 0, started.stderr
    assert bystander.poll() is None, "the unrelated process was killed"
    assert started.stdout.startswith(f"already running: {server['url']} (pid {server['pid']}")
    assert json.loads(shared.state_file.read_text())["pid"] == server["pid"]
    assert servers(shared.home / "prefect") == [server["pid"]]


def test_a_corrupt_state_file_finds_the_running_server_instead_of_starting_another(
    shared: Home, server: dict[str, Any]
):
    shared.state_file.write_text('{"pid": 12')  # cut short: a full disk, an editor
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "server", "start"],
            env=shared.env,
            cwd=shared.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outputs
    for out, _ in outputs:  # both found the one server; neither started a second
        assert out.startswith(f"already running: {server['url']} (pid {server['pid']}"), outputs
    notes = [err for _, err in outputs if "recorded again" in err]
    assert len(notes) == 1, outputs  # one process rewrote the file, under the lock
    assert f"{shared.state_file} is not a server record" in notes[0]
    assert servers(shared.home / "prefect") == [server["pid"]]
    assert json.loads(shared.state_file.read_text())["url"] == server["url"]


def test_a_corrupt_state_file_where_processes_cannot_be_listed_is_refused(
    shared: Home, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # a system without /proc (macOS): the running server cannot be found, so none is started
    monkeypatch.setenv("PIPELINE_HOME", str(shared.home))
    monkeypatch.setattr(identity, "PROC", tmp_path / "no-proc")
    saved = shared.state_file.read_text()
    shared.state_file.write_text("not json")
    try:
        with pytest.raises(OrchestrationError) as err:
            ensure_server()
    finally:
        shared.state_file.write_text(saved)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{shared.state_file} is not a server record")
    assert "cannot list running processes" in message
    assert servers(shared.home / "prefect") == [server["pid"]]


@contextlib.contextmanager
def _client(url: str) -> Iterator[Any]:
    """A synchronous Prefect client of the server at ``url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: url}),
        get_client(sync_client=True) as client,
    ):
        yield client


def _flow_runs(url: str, name: str) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with _client(url) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )


def _task_runs(url: str, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client(url) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def _training(h: Home, log: Path, url: str, timeout: float = 180) -> subprocess.Popen[bytes]:
    """`pipeline train specs/slow.yaml` started, returned once its flow run is Running on
    ``url`` and an epoch has been logged."""
    proc = h.stage("train", "specs/slow.yaml", log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        running = [r for r in _flow_runs(url, "slow") if r.state.type.value == "RUNNING"]
        if running and "epoch 1 " in log.read_text():
            return proc
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no running flow run 'slow' within {timeout} s:\n{log.read_text()[-3000:]}")


def test_a_sigkilled_stage_is_marked_crashed_by_the_next_stage(
    shared: Home, server: dict[str, Any], tmp_path: Path
):
    url = server["url"]
    killed = _training(shared, tmp_path / "train.log", url)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    (run,) = [r for r in _flow_runs(url, "slow") if r.state.type.value == "RUNNING"]
    time.sleep(1)
    (still,) = [r for r in _flow_runs(url, "slow") if r.id == run.id]
    assert still.state.type.value == "RUNNING"  # nothing else would ever report it

    # the next stage against the server, as dvc runs it, puts the record straight
    nxt = shared.pipeline("prepare", "specs/tiny.yaml")
    assert nxt.returncode == 0, nxt.stderr
    assert "flow run 'slow' was left unfinished by a stage process that died: Crashed" in (
        nxt.stderr
    )
    (after,) = [r for r in _flow_runs(url, "slow") if r.id == run.id]
    assert after.state.type.value == "CRASHED"
    assert f"pid {killed.pid}" in after.state.message
    tasks = _task_runs(url, run.id)
    assert tasks and not [t for t in tasks if t.state.type.value in ("RUNNING", "PENDING")]
    # the next stage's own run completed, and is not touched by a later stage
    (tiny,) = _flow_runs(url, "tiny")
    assert tiny.state.type.value == "COMPLETED"
    again = shared.pipeline("prepare", "specs/tiny.yaml")
    assert again.returncode == 0 and "Crashed" not in again.stderr


def test_a_server_stopped_during_a_stage_ends_it_at_once_with_one_line(
    shared: Home, server: dict[str, Any], tmp_path: Path
):
    log = tmp_path / "train.log"
    stage = _training(shared, log, server["url"])
    stopped = shared.pipeline("server", "stop", timeout=60)
    assert stopped.returncode == 0 and f"stopped {server['url']}" in stopped.stdout
    began = time.monotonic()
    try:
        code = stage.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(stage.pid, signal.SIGKILL)
        pytest.fail(
            f"the stage still ran 20 s after the server stopped:\n{log.read_text()[-3000:]}"
        )
    took = time.monotonic() - began
    err = log.read_text()
    print(f"\nthe stage ended {took:.1f} s after `pipeline server stop` returned")
    assert took < 5
    assert code == 1
    assert "Traceback" not in err
    base = server["url"].removesuffix("/api")
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: the Prefect server at {base} stopped during the stage; ")
    assert sum("stopped during the stage" in line for line in lines) == 1
    assert not (shared.root / "runs" / "slow" / "train.json").exists()  # written when it ends
