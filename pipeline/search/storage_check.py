"""Whether a search's storage can be opened, checked before any trial runs and creating
nothing: a folder or file that can be made, a SQLite URL, a server that answers (once, with a
short timeout)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT_S = 5.0
"""How long a storage server may take to answer the check's connection."""


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` can neither be used nor made (nothing is created); None when it can."""
    path = Path(os.path.abspath(folder))
    place = next((p for p in (path, *path.parents) if p.exists()), None)
    if place is None:
        return f"none of the folders above {path} exists"
    made = place != path  # the folder to make it in
    if not place.is_dir():
        return f"{place} is a file, " + (
            "so no folder can be made inside it" if made else "not a folder"
        )
    if not os.access(place, os.W_OK | os.X_OK):
        return f"the folder {place} is not writable" + (
            f", so {path} cannot be made in it" if made else ""
        )
    return None


def file_problem(file: Path) -> str | None:
    if file.is_dir():
        return f"{file} is a folder"
    return folder_problem(file.parent)


def url_problem(url: str, parallel: int) -> tuple[str, str] | None:
    """Why the storage ``url`` cannot be opened (message, severity); None when it can."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as err:
        return (
            f"{url!r} is not a storage URL ({err}); write sqlite:///<file>, "
            "postgresql://user@host/db, or journal:<file>",
            "error",
        )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or "mode=memory" in str(parsed.query):
            if parallel > 1:
                return (
                    "an in-memory SQLite database is one process's own: parallel trials "
                    "cannot share it; name a file (sqlite:///runs/study.db)",
                    "error",
                )
            return (
                "an in-memory SQLite database: the study is lost when the search ends and "
                "cannot be continued",
                "warning",
            )
        problem = file_problem(Path(database))
        if problem:
            return f"the SQLite database {database} cannot be made: {problem}", "error"
        return None
    return _connect_problem(url, parsed)


def _connect_problem(url: str, parsed: Any) -> tuple[str, str] | None:
    """Connect once, with a short timeout, to a storage server; never creates anything."""
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError
    from sqlalchemy.pool import NullPool

    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    connect_args = (
        {"connect_timeout": int(CONNECT_TIMEOUT_S)}
        if backend
        in (
            "postgresql",
            "mysql",
            "mariadb",
        )
        else {}
    )
    try:
        engine = sqlalchemy.create_engine(parsed, connect_args=connect_args, poolclass=NullPool)
    except NoSuchModuleError:
        return f"{shown}: SQLAlchemy has no database kind {parsed.drivername!r}", "error"
    except ModuleNotFoundError as err:
        driver = err.name or parsed.drivername
        return (
            f"{shown}: the {backend} driver {driver!r} is not installed in this environment "
            f"(pip install {_driver_package(driver)}), so the storage cannot be opened",
            "error",
        )
    except Exception as err:  # bad options in the URL
        return f"{shown}: {type(err).__name__}: {err}", "error"
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            with engine.connect():
                outcome["error"] = None
        except BaseException as err:  # reported, never raised
            outcome["error"] = err

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 1)
    if "error" not in outcome:
        return f"{shown}: the server did not answer within {CONNECT_TIMEOUT_S:g} s", "error"
    err = outcome["error"]
    engine.dispose()
    if err is None:
        return None
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return f"cannot reach the storage {shown}: {text[0] if text else type(err).__name__}", "error"


def _driver_package(module: str) -> str:
    known = {
        "psycopg": "'psycopg[binary]'",
        "psycopg2": "psycopg2-binary",
        "MySQLdb": "mysqlclient",
    }
    return known.get(module, module)
