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
from pipeline.orchestrate import identity
from pipeline.orchestrate.mode import OrchestrationError, home, note
from pipeline.proc import pid_alive


@dataclass
class Server:
    pid: int
    url: str
    prefect_home: str
    log: str
    started: float
    token: str = ""  # the server's identity (``identity``); empty in a state file from before

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def ours(self) -> bool:
        """Its pid is positively this server (not a process that got the pid since)."""
        return identity.is_server(
            self.pid, token=self.token, port=self.port, prefect_home=self.prefect_home
        )

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


def read_record() -> tuple[Server | None, str | None]:
    """The recorded server, or None with why: None when there is no state file, a sentence
    when there is one that cannot be read (truncated, edited by hand)."""
    try:
        text = state_file().read_text()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    try:
        data = json.loads(text)
        return Server(**data), None
    except (ValueError, TypeError) as err:
        return None, f"is not a server record ({type(err).__name__}: {err})"


def read_state() -> Server | None:
    """The recorded server; None when there is none or its state file cannot be read."""
    return read_record()[0]


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


def _server_env(prefect_home: Path, url: str, token: str) -> dict[str, str]:
    env = dict(os.environ)
    # the server gets its own home and profile; a client-side URL must not leak into its UI
    for key in (
        "PREFECT_API_URL",
        "PREFECT_PROFILE",
        "PREFECT_PROFILES_PATH",
        "PREFECT_UI_API_URL",
        "PREFECT_SERVER_UI_API_URL",
    ):
        env.pop(key, None)
    env["PREFECT_HOME"] = str(prefect_home)
    # the UI's browser code calls the API this server serves (Prefect's default is port 4200)
    env["PREFECT_SERVER_UI_API_URL"] = url
    env[identity.TOKEN_ENV] = token
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
    """SIGTERM the server (the leader of its own process group, where it started one: what it
    started goes with it), SIGKILL what is left after ``timeout``. Only ever called on a pid
    ``identity`` has shown to be the server."""
    try:
        group = os.getpgid(pid) == pid
    except OSError:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
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
    token = identity.new_token()
    cmd = [
        sys.executable,
        *identity.launcher(token),
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
            env=_server_env(prefect_home, url, token),
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
                token=token,
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


def _recorded() -> Server | None:
    """Under the lock: the server the state file records, if that pid is still it; else the
    server of this ``PREFECT_HOME`` that runs unrecorded (a state file lost or corrupted while
    it ran), recorded again. Never a second server on one SQLite database: when the state file
    is unreadable and running processes cannot be listed, an error naming the file."""
    server, problem = read_record()
    if server is not None:
        if server.ours():
            return server
        if pid_alive(server.pid):
            note(
                f"pid {server.pid} in {state_file()} is not the pipeline's Prefect server any "
                "more (another process has that pid): left alone"
            )
    prefect_home = home() / "prefect"
    try:
        found = identity.find_servers(prefect_home)
    except OSError:
        if problem:
            raise OrchestrationError(
                f"{state_file()} {problem}, and this system cannot list running processes to "
                f"find a server on {prefect_home}: stop any `prefect server` using it, then "
                "remove the file"
            ) from None
        return None
    for pid, process in found:
        port = process.option("--port")
        if port and port.isdigit():
            adopted = Server(
                pid=pid,
                url=f"http://127.0.0.1:{port}/api",
                prefect_home=str(prefect_home),
                log=str(home() / "prefect-server.log"),
                started=time.time(),
                token=process.token or "",
            )
            why = problem or ("names another process" if server else "is missing")
            note(
                f"{state_file()} {why}; found the server running on {prefect_home}: "
                f"{adopted.url} (pid {pid}), recorded again"
            )
            _write_state(adopted)
            return adopted
    return None


def ensure_server(port: int | None = None) -> tuple[Server, bool]:
    """The managed server, started if it is not running; (server, whether it was started now)."""
    server = read_state()
    if server and server.healthy() and server.ours():
        return server, False
    with _lock():
        server = _recorded()  # another stage may have started it while this one waited
        if server is not None:
            deadline = time.monotonic() + 10  # alive but slow to answer: busy, not dead
            while time.monotonic() < deadline:
                if healthy(server.url, timeout=1.0):
                    return server, False
                time.sleep(0.5)
            note(
                f"the Prefect server {server.url} (pid {server.pid}) does not answer: restarting it"
            )
            _stop_group(server.pid)
        state_file().unlink(missing_ok=True)
        return _start(port), True


def stop_server() -> Server | None:
    """Stop the managed server (its whole process group); None when none runs. A recorded pid
    that is not the server (anything else now has it) is never signalled."""
    with _lock():
        server = _recorded()
        if server is not None:
            _stop_group(server.pid)
        state_file().unlink(missing_ok=True)
        return server
