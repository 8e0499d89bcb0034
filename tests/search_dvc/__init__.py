"""A search's trials as DVC experiments, and DVC's own queue of spec variants, in a real git + DVC
repository (tests/orchestration/test_dvc.py's tiny project) on a real MNIST subset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.orchestration.test_dvc import Repo, new_repo


def make_repo(tmp: Path) -> Repo:
    """A committed git + DVC repository under ``tmp`` with the project's dvc.yaml and the spec
    ``specs/tiny.yaml``: tests/orchestration/test_dvc.py's, not yet reproduced."""
    return new_repo(tmp)


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
