"""The pipeline-managed Prefect server: started once (a persistent ``PREFECT_HOME``, so its
SQLite database is migrated once), reused by every later stage process, stopped by
``pipeline server stop``. Its state lives in ``$PIPELINE_HOME/prefect-server.json``; a lock
makes sure two stages starting at once start one server. Standard library only."""

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import atomic
from pipeline.orchestrate.mode import OrchestrationError, home, note
from pipeline.proc import pid_alive


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
    atomic.write_text(state_file(), json.dumps(asdict(server), indent=2) + "\n")


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


def free_port() -> int:
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
    port = port or int(os.environ.get("PIPELINE_PREFECT_PORT") or 0) or free_port()
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
                note(
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
