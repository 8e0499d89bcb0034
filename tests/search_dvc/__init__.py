"""A search's trials as DVC experiments, and DVC's own queue of spec variants, in a real git + DVC
repository (tests/orchestration/test_dvc.py's tiny project) on a real MNIST subset."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import MIRROR
from tests.orchestration.test_dvc import BIN, Repo, _require_mirror, tiny_project


def make_repo(tmp: Path) -> Repo:
    """A committed git + DVC repository under ``tmp`` with the project's dvc.yaml and the spec
    ``specs/tiny.yaml`` (one epoch of a small convnet on 200 images a class), its commands run
    plainly (no Prefect) on the dataset mirror, every cache in ``tmp``."""
    _require_mirror()
    root = tmp / "repo"
    root.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"),
        "PIPELINE_DATA_MIRROR": str(MIRROR),
        "PIPELINE_DATA_CACHE": str(tmp / "data-cache"),
        "PIPELINE_ORCHESTRATION": "off",
        "PREFECT_HOME": str(tmp / "prefect"),
        "PIPELINE_HOME": str(tmp / "pipeline-home"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for name in ("DVC_ROOT", "DVC_EXP_BASELINE_REV", "DVC_EXP_NAME", "PIPELINE_RUNS_DIR"):
        env.pop(name, None)
    repo = Repo(root, env, subprocess.CompletedProcess([], 0))
    repo.run("git", "init", "-q")
    repo.run("git", "config", "user.name", "test")
    repo.run("git", "config", "user.email", "test@example.com")
    tiny_project(root, repo.run)
    repo.write_spec()
    repo.commit("the project with a tiny spec")
    return repo


def experiments(repo: Repo) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``'s experiments by name: each its rev, data (params, metrics) and
    error."""
    table = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    return {
        rev["name"]: rev
        for base in table
        for group in base.get("experiments") or []
        for rev in group["revs"]
    }
