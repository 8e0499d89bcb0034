"""`dvc repro` of the default spec, wall time and what orchestration adds, side by side.

A copy of the project (dvc.yaml, params.yaml, specs/, pipeline/ as the stages' code deps) in a
temporary git + DVC repository; the stage commands run the installed ``pipeline``. Each variant
is a ``dvc repro --force`` (every stage re-runs: resolve, prepare, train, evaluate) with
``PIPELINE_ORCHESTRATION`` set:

  off            the plain functions, no Prefect: DVC plus the stages' own work
  auto, cold     the first repro on a machine: starts the local Prefect server, new database
  auto, warm     the server already running (every later repro)
  ephemeral      Prefect's temporary server in each stage process

Orchestration overhead = a variant's wall time minus its training epochs (history.csv
``time_s``: the same work in every variant, and the part that varies most from run to run),
minus the same for ``off``.

  PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/repro.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if proc.returncode:
        sys.exit(f"{' '.join(args)} exited with {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc.stdout


def _project(tmp: Path, spec: str, env: dict[str, str]) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "specs", repo / "specs")
    shutil.copytree(
        ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (repo / "params.yaml").write_text(f"specs:\n  - {spec}\n")
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project"],
    ):
        _run(cmd, repo, env)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="mnist_convnet")
    parser.add_argument(
        "--variants", default="off,cold,warm,ephemeral", help="comma-separated, in this order"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="repro-bench-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "DVC_")) and k != "PIPELINE_ORCHESTRATION"
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PIPELINE_HOME=str(tmp / "home"),
        PREFECT_HOME=str(tmp / "prefect-client"),
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="b@example.com",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="b@example.com",
    )
    repo = _project(tmp, args.spec, env)
    out = repo / "runs" / args.spec
    rows = []
    try:
        for variant in args.variants.split(","):
            mode = {"cold": "auto", "warm": "auto"}.get(variant, variant)
            if variant == "cold":
                _run([str(BIN / "pipeline"), "server", "stop"], repo, env)
                shutil.rmtree(tmp / "home", ignore_errors=True)  # a new database too
            if variant == "warm":
                _run([str(BIN / "pipeline"), "server", "start"], repo, env)
            began = time.monotonic()
            _run(
                [str(BIN / "dvc"), "repro", "--force"], repo, env | {"PIPELINE_ORCHESTRATION": mode}
            )
            wall = time.monotonic() - began
            with open(out / "history.csv") as f:
                train_s = sum(float(r["time_s"]) for r in csv.DictReader(f))
            accuracy = json.loads((out / "metrics.json").read_text())["test_accuracy"]
            rows.append((variant, mode, wall, train_s, accuracy))
            print(
                f"{variant:10} {wall:6.1f} s wall, epochs {train_s:5.1f} s, "
                f"test accuracy {accuracy:.4f}",
                flush=True,
            )
    finally:
        subprocess.run(
            [str(BIN / "pipeline"), "server", "stop"], cwd=repo, env=env, capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)

    # Training time varies from run to run more than orchestration costs: compare the rest.
    base = next((r[2] - r[3] for r in rows if r[0] == "off"), None)
    print(
        f"\n`dvc repro --force` of specs/{args.spec}.yaml, 4 stages, "
        f"load average {os.getloadavg()[0]:.2f} at the end\n"
    )
    print(
        "| PIPELINE_ORCHESTRATION | wall (s) | training epochs (s) | wall - epochs (s) "
        "| orchestration (s) | test accuracy |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, mode, wall, train_s, accuracy in rows:
        label = {"cold": "auto, server started (new database)", "warm": "auto, server running"}.get(
            variant, mode
        )
        rest = wall - train_s
        extra = f"{rest - base:+.1f}" if base is not None and variant != "off" else "0"
        print(f"| {label} | {wall:.1f} | {train_s:.1f} | {rest:.1f} | {extra} | {accuracy:.4f} |")


if __name__ == "__main__":
    main()
