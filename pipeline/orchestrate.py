"""How the stage commands reach Prefect: the orchestration mode and the pipeline-managed server.

``PIPELINE_ORCHESTRATION`` picks the mode:

- ``auto`` (the default): the server ``PREFECT_API_URL`` names (environment or active Prefect
  profile) when it answers; otherwise a local server the pipeline starts once and reuses (state
  in ``$PIPELINE_HOME/prefect-server.json``); should that fail, Prefect's ephemeral mode.
- ``server``: the same, but an unreachable server is an error instead of a fall-back.
- ``ephemeral``: Prefect's own temporary server in each process (about 8-10 s a process).
- ``off``: the plain library functions; Prefect is not even imported.

Ephemeral mode pays the start of a temporary server in every process, so a ``dvc repro`` of
three stages would pay it three times; one local server started once (a persistent
``PREFECT_HOME``, so its SQLite database is migrated once) costs the first stage a few seconds
and the others nothing. ``pipeline server start|stop|status`` manages it by hand.

Nothing here imports Prefect or torch at module level: ``off`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.proc import pid_alive

MODES = ("auto", "server", "ephemeral", "off")
MODE_ENV = "PIPELINE_ORCHESTRATION"
DEFAULT_POOL = "pipeline-local"
DEFAULT_DEPLOYMENT = "local"


class OrchestrationError(PipelineError):
    """A problem the user can act on (no server, a bad mode): its message says what to do."""


def mode() -> str:
    value = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise OrchestrationError(f"{MODE_ENV}={value!r} is not one of {', '.join(MODES)}")
    return value


def home() -> Path:
    """``$PIPELINE_HOME`` (default ``~/.cache/pipeline``): the managed server's state lives here."""
    return Path(os.environ.get("PIPELINE_HOME") or Path.home() / ".cache" / "pipeline")


def telemetry_off() -> None:
    """Prefect's client telemetry and server analytics off, unless the user set them."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _note(message: str) -> None:
    print(f"pipeline: {message}", file=sys.stderr)


# ---- the managed server ----------------------------------------------------------------------


@dataclass
class Server:
    pid: int
    url: str
    prefect_home: str
    log: str
    started: float

    def healthy(self, timeout: float = 1.0) -> bool:
        return pid_alive(self.pid) and healthy(self.url, timeout)


def state_file() -> Path:
    return home() / "prefect-server.json"


def healthy(url: str, timeout: float = 1.0) -> bool:
    """The server at ``url`` (``.../api``) answers ``/health`` with 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Anything answers at ``url``, even with an error status (Prefect Cloud wants a key for
    ``/health``): only a refused or timed-out connection counts as unreachable."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _is_prefect(pid: int) -> bool:
    """Guards against killing an unrelated process that got a recorded pid after a reboot."""
    try:
        return b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)  # no /proc: trust the state file


def read_state() -> Server | None:
    try:
        return Server(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(server: Server) -> None:
    path = state_file()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(server), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One process at a time checks and starts the server (two stages never start two)."""
    import fcntl

    home().mkdir(parents=True, exist_ok=True)
    with open(home() / "prefect-server.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the server gets its own home and profile; a client-side URL must not leak into its UI
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(key, None)
    env["PREFECT_HOME"] = str(prefect_home)
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the server's process group (uvicorn is a child of ``prefect server start``),
    SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def start_timeout() -> float:
    return float(os.environ.get("PIPELINE_PREFECT_STARTUP_TIMEOUT") or 60)


def _start(port: int | None = None) -> Server:
    prefect_home = home() / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    log = home() / "prefect-server.log"
    port = port or int(os.environ.get("PIPELINE_PREFECT_PORT") or 0) or _free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_server_env(prefect_home),
            cwd=home(),
            start_new_session=True,
        )  # outlives this process, own group
    timeout = start_timeout()
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        code = proc.poll()
        if code is not None:
            raise OrchestrationError(
                f"the Prefect server exited with code {code} while starting ({log}):\n" + _tail(log)
            )
        if healthy(url, timeout=0.5):
            server = Server(
                pid=proc.pid,
                url=url,
                prefect_home=str(prefect_home),
                log=str(log),
                started=time.time(),
            )
            _write_state(server)
            proc.returncode = 0  # it runs on after this process: no "still running" warning
            return server
        time.sleep(0.2)
    _stop_group(proc.pid)
    raise OrchestrationError(
        f"the Prefect server did not answer {url}/health within {timeout:.0f} s; its log: {log} "
        "(PIPELINE_PREFECT_STARTUP_TIMEOUT raises the wait)"
    )


def ensure_server(port: int | None = None) -> tuple[Server, bool]:
    """The managed server, started if it is not running; (server, whether it was started now)."""
    server = read_state()
    if server and server.healthy():
        return server, False
    with _lock():
        server = read_state()  # another stage may have started it while this one waited
        if server and pid_alive(server.pid):
            deadline = time.monotonic() + 10  # alive but slow to answer: busy, not dead
            while time.monotonic() < deadline:
                if healthy(server.url, timeout=1.0):
                    return server, False
                time.sleep(0.5)
            if _is_prefect(server.pid):
                _note(
                    f"the Prefect server {server.url} (pid {server.pid}) does not answer: "
                    "restarting it"
                )
                _stop_group(server.pid)
        state_file().unlink(missing_ok=True)
        return _start(port), True


def stop_server() -> Server | None:
    """Stop the managed server (its whole process group); None when none was recorded."""
    with _lock():
        server = read_state()
        if server is None:
            return None
        if pid_alive(server.pid) and _is_prefect(server.pid):
            _stop_group(server.pid)
        state_file().unlink(missing_ok=True)
        return server


# ---- which API a run uses -------------------------------------------------------------------


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect resolves it (environment, profile, prefect.toml, .env)."""
    telemetry_off()
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def api_url(current_mode: str | None = None) -> str | None:
    """The API this process's flow runs report to; None for Prefect's ephemeral mode."""
    current_mode = current_mode or mode()
    if current_mode == "ephemeral":
        return None
    if current_mode == "off":
        raise OrchestrationError(f"{MODE_ENV}=off: no Prefect server is used")
    configured = configured_api_url()
    if configured:
        if reachable(configured):
            return configured
        if current_mode == "server":
            raise OrchestrationError(
                f"the Prefect server at {configured} (PREFECT_API_URL) does not answer"
            )
        _note(
            f"the Prefect server at {configured} (PREFECT_API_URL) does not answer; "
            "using the pipeline's local server"
        )
    try:
        server, started = ensure_server()
    except OrchestrationError as err:
        if current_mode == "server":
            raise
        _note(f"{err}\npipeline: falling back to Prefect's ephemeral mode")
        return None
    if started:
        _note(
            f"started a local Prefect server at {server.url.removesuffix('/api')} "
            f"(pid {server.pid}; `pipeline server stop` stops it)"
        )
    return server.url


@contextlib.contextmanager
def prefect_context(current_mode: str | None = None) -> Iterator[str | None]:
    """Run Prefect code against the mode's API. Per stage process, the flow-run heartbeat is
    off (measured: about 0.5 s a stage; only an automation the user sets up reads it), unless
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set. Deployment runs (a worker's) keep it."""
    url = api_url(current_mode)
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    _quiet_user_errors()
    updates: dict[Any, Any] = {PREFECT_API_URL: url}
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        yield url


class _NoUserTraceback:
    """A failed run logs its exception with a traceback; on the console, the pipeline's own
    errors (a bad spec, missing data, a diverged run: a ``PipelineError``) keep their
    one-line message, as without Prefect. The API's copy of the log, emitted first, keeps it."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_errors() -> None:
    import logging

    import prefect.main  # noqa: F401 - configures Prefect's logging (a later call is incremental)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _NoUserTraceback) for f in handler.filters
        ):
            handler.addFilter(_NoUserTraceback())


# ---- the stages ------------------------------------------------------------------------------


def training_summary(result: Any) -> dict[str, Any]:
    """What a train run returns to its caller (a flow's result, the CLI's line)."""
    return {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "last": result.history[-1] if result.history else {},
        "run_dir": str(result.run_dir),
    }


def _flow(name: str, **parameters: Any) -> Any:
    with prefect_context():
        from pipeline import flows

        return getattr(flows, name)(**parameters)


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def prepared_for(spec: Any, data: str | Path | None) -> Any:
    """The ``prepared=`` a stage passes to train/evaluate: the folder ``data`` (a DVC stage's
    dependency, written by ``prepare --out``), checked to hold this spec's data section; None
    leaves them to their own default (the spec's folder, prepared when missing)."""
    from pipeline.data.prepare import load_prepared_for

    return None if data is None else load_prepared_for(spec, data)


def prepare(
    spec_path: str | Path,
    overrides: list[str],
    spec: Any,
    *,
    force: bool = False,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """The spec's prepared data (``Prepared``), in ``out`` when given, through the ``prepare``
    flow unless ``off``."""
    from pipeline.data.prepare import load_prepared
    from pipeline.data.prepare import prepare as prepare_spec

    if mode() == "off":
        return prepare_spec(spec, force=force, progress=progress, target=out)
    root = _flow(
        "prepare_flow", spec=str(spec_path), overrides=list(overrides), force=force, out=_str(out)
    )
    return load_prepared(root, mmap=True)


def train(
    spec_path: str | Path,
    overrides: list[str],
    spec: Any,
    *,
    resume: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    if mode() == "off":
        from pipeline.train.loop import train as train_spec

        return training_summary(train_spec(spec, prepared=prepared_for(spec, data), resume=resume))
    return _flow(
        "train_flow", spec=str(spec_path), overrides=list(overrides), resume=resume, data=_str(data)
    )


def evaluate(
    spec_path: str | Path, overrides: list[str], spec: Any, *, data: str | Path | None = None
) -> dict[str, Any]:
    if mode() == "off":
        from pipeline.evaluate import evaluate as evaluate_spec

        return evaluate_spec(spec, prepared=prepared_for(spec, data))
    return _flow("evaluate_flow", spec=str(spec_path), overrides=list(overrides), data=_str(data))


def experiment(
    spec_path: str | Path,
    overrides: list[str],
    spec: Any,
    *,
    resume: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    if mode() == "off":
        from pipeline.data.prepare import prepare as prepare_spec
        from pipeline.evaluate import evaluate as evaluate_spec
        from pipeline.train.loop import train as train_spec

        prepared = prepare_spec(spec, progress=lambda m: print(m, file=sys.stderr), target=data)
        train_spec(spec, prepared=prepared, resume=resume)
        return evaluate_spec(spec, prepared=prepared)
    return _flow(
        "experiment_flow",
        spec=str(spec_path),
        overrides=list(overrides),
        resume=resume,
        data=_str(data),
    )


# ---- deployment ------------------------------------------------------------------------------


def deploy(
    project: str | Path = ".",
    name: str = DEFAULT_DEPLOYMENT,
    pool: str = DEFAULT_POOL,
    parameters: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Create (or update) the ``experiment`` deployment on the process work pool ``pool``
    (created if missing). Its pull step makes ``project`` the working directory, so a run's
    outputs land in ``<project>/runs/<name>/`` where dvc expects them; the flow is imported from
    the installed ``pipeline`` package. Returns (deployment id, API URL)."""
    current = mode()
    if current in ("off", "ephemeral"):
        raise OrchestrationError(
            f"{MODE_ENV}={current}: a deployment needs a Prefect server (auto or server)"
        )
    with prefect_context(current) as url:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.deployments.runner import EntrypointType
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.runner.storage import LocalStorage
        from prefect.workers.process import ProcessWorker

        from pipeline.flows import experiment_flow

        with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        deployment = experiment_flow.to_deployment(
            name=name,
            work_pool_name=pool,
            parameters=parameters or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="prepare -> train -> evaluate of a spec (parameters: spec, overrides)",
        )
        deployment.storage = LocalStorage(path=str(Path(project).resolve()))
        deployment_id = deployment.apply(work_pool_name=pool)
        return str(deployment_id), str(url)
