"""Which process is the pipeline's Prefect server: identified positively before it is ever
signalled or adopted, never by a pid alone (a pid is reused) or a word in a command line (an
unrelated ``prefect worker`` has one).

Each server is started with a random token, in its command line (``python -X
pipeline-prefect-server=<token> -m prefect server start ... --port <port>``: Python keeps
unknown ``-X`` options) and its environment, and the token is recorded in the state file. A
process is the recorded server when its command line has that token and that port and (where
``/proc`` shows it) its environment has that ``PREFECT_HOME``. Standard library only."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.proc import pid_alive

TOKEN_ENV = "PIPELINE_PREFECT_SERVER_TOKEN"
XOPTION = "pipeline-prefect-server"
PROC = Path("/proc")


def new_token() -> str:
    return secrets.token_hex(16)


def launcher(token: str) -> list[str]:
    """The interpreter options that put ``token`` in the server's command line."""
    return ["-X", f"{XOPTION}={token}"]


@dataclass(frozen=True)
class Seen:
    """What can be read of a running process: its argv, and its environment where ``/proc``
    shows it (None elsewhere)."""

    argv: list[str]
    environ: dict[str, str] | None

    def option(self, flag: str) -> str | None:
        """The value after ``flag`` in the argv (``--port 4200``)."""
        for i, arg in enumerate(self.argv[:-1]):
            if arg == flag:
                return self.argv[i + 1]
        return None

    @property
    def token(self) -> str | None:
        for i, arg in enumerate(self.argv[:-1]):
            if arg == "-X" and self.argv[i + 1].startswith(XOPTION + "="):
                return self.argv[i + 1].split("=", 1)[1]
        return None

    @property
    def serves_prefect(self) -> bool:
        """``... prefect server start ...``: a Prefect server, ours or not."""
        argv = self.argv
        return any(argv[i : i + 3] == ["prefect", "server", "start"] for i in range(len(argv) - 2))

    def home_is(self, prefect_home: str | Path) -> bool | None:
        """Its ``PREFECT_HOME`` is ``prefect_home``; None where the environment is unreadable."""
        if self.environ is None:
            return None
        value = self.environ.get("PREFECT_HOME")
        return value is not None and os.path.realpath(value) == os.path.realpath(prefect_home)


def seen(pid: int) -> Seen | None:
    """The process ``pid`` as ``/proc`` (or, without it, ``ps``) shows it; None when it is
    gone or cannot be read."""
    if not pid_alive(pid):
        return None
    if PROC.is_dir():
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        try:
            raw = (PROC / str(pid) / "environ").read_bytes()
            environ: dict[str, str] | None = dict(
                item.split("=", 1)
                for item in raw.decode(errors="replace").split("\0")
                if "=" in item
            )
        except OSError:
            environ = None
        return Seen([a.decode(errors="replace") for a in argv if a], environ)
    try:  # no /proc (macOS, BSD): the command line alone, which holds the token
        out = subprocess.run(
            ["ps", "-ww", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Seen(out.split(), None) if out else None


def is_server(pid: int, *, token: str, port: int, prefect_home: str | Path) -> bool:
    """``pid`` is positively the server recorded with ``token``, ``port`` and ``prefect_home``.
    A state file written before tokens existed (``token`` empty) is matched on a
    ``prefect server start --port <port>`` command line with that ``PREFECT_HOME``, which
    needs ``/proc``."""
    process = seen(pid)
    if process is None or not process.serves_prefect or process.option("--port") != str(port):
        return False
    home = process.home_is(prefect_home)
    if token:
        return process.token == token and home is not False
    return home is True


def find_servers(prefect_home: str | Path) -> list[tuple[int, Seen]]:
    """Every running ``prefect server start`` whose ``PREFECT_HOME`` is ``prefect_home`` (a
    server of this pipeline home, whatever the state file says). Needs ``/proc``: raises
    OSError without it."""
    if not PROC.is_dir():
        raise OSError(f"{PROC} is not available: running processes cannot be listed")
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        process = seen(pid)
        if process and process.serves_prefect and process.home_is(prefect_home):
            try:
                if os.getpgid(pid) == pid:  # started in its own session: not a forked child
                    found.append((pid, process))
            except OSError:
                continue
    return sorted(found)
