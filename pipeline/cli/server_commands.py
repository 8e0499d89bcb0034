"""The Prefect side of the CLI: ``server`` (the local server the stage commands share) and
``deploy`` (a deployment of the experiment flow)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pipeline import orchestrate
from pipeline.orchestrate.server import read_record


def add_commands(sub: Any) -> None:
    p = sub.add_parser("server", help="the local Prefect server the stage commands share")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.add_argument("--port", type=int, help="start: this port (default: a free one)")
    p.set_defaults(handler=server)

    p = sub.add_parser("deploy", help="a Prefect deployment of the experiment flow on a work pool")
    p.add_argument(
        "--name",
        default=orchestrate.DEFAULT_DEPLOYMENT,
        help=f"deployment name (default: {orchestrate.DEFAULT_DEPLOYMENT})",
    )
    p.add_argument(
        "--pool", default=orchestrate.DEFAULT_POOL, help="process work pool (created if missing)"
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        help="project folder runs work in (default: this one)",
    )
    p.set_defaults(handler=deploy)


def server(args: argparse.Namespace) -> int:
    if args.action == "start":
        running, started = orchestrate.ensure_server(port=args.port)
        print(
            f"{'started' if started else 'already running'}: {running.url} (pid {running.pid}; "
            f"UI {running.url.removesuffix('/api')}; log {running.log})"
        )
        return 0
    if args.action == "stop":
        stopped = orchestrate.stop_server()
        print(f"stopped {stopped.url} (pid {stopped.pid})" if stopped else "no server was running")
        return 0
    state, problem = read_record()
    up = state is not None and state.healthy() and state.ours()
    if args.action == "url":
        if up:
            print(state.url)  # type: ignore[union-attr]
        return 0 if up else 1
    if state is None:
        print(f"no pipeline-managed Prefect server (state: {orchestrate.state_file()})")
        if problem:
            print(
                f"note     {orchestrate.state_file()} {problem}: `pipeline server start` finds "
                "a server still running on its PREFECT_HOME, or starts one"
            )
    else:
        print(
            f"url      {state.url}\npid      {state.pid}\nhealthy  {'yes' if up else 'NO'}\n"
            f"home     {state.prefect_home}\nlog      {state.log}"
        )
    print(f"mode     {orchestrate.MODE_ENV}={orchestrate.mode()}")
    if os.environ.get("PREFECT_API_URL"):
        print(
            f"note     PREFECT_API_URL={os.environ['PREFECT_API_URL']} is set: the stage "
            "commands use that server while it answers"
        )
    return 0 if up else 1


def deploy(args: argparse.Namespace) -> int:
    deployment_id, url = orchestrate.deploy(args.dir, name=args.name, pool=args.pool)
    print(
        f"deployment experiment/{args.name} ({deployment_id}) on work pool {args.pool!r} at "
        f"{url}; runs work in {args.dir.resolve()}\n"
        f"start a worker:  PREFECT_API_URL={url} prefect worker start --pool {args.pool}\n"
        f"submit a run:    PREFECT_API_URL={url} prefect deployment run "
        f"experiment/{args.name} --param spec=specs/mnist_convnet.yaml "
        "--param overrides='[\"train.epochs=1\"]'"
    )
    return 0
