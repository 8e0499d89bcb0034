"""Shared by every test package: where the real datasets are."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

MIRROR = Path(
    os.environ.get("PIPELINE_DATA_MIRROR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)

# The stage commands run as Prefect flows by default (pipeline.orchestrate, mode auto, which
# starts a server that outlives the process). Tests that are not about orchestration run them
# plainly, and none starts a server in the user's home: tests/orchestration sets its own modes.
os.environ["PIPELINE_ORCHESTRATION"] = "off"
os.environ["PIPELINE_HOME"] = tempfile.mkdtemp(prefix="pipeline-test-home-")


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real MNIST/Fashion-MNIST mirror, exported as PIPELINE_DATA_MIRROR. Missing: skip,
    or fail under CI, where the data must be there."""
    if not (MIRROR / "MNIST" / "raw").is_dir() or not (MIRROR / "FashionMNIST" / "raw").is_dir():
        why = f"dataset mirror {MIRROR} is missing (set PIPELINE_DATA_MIRROR)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(MIRROR))
    return MIRROR
