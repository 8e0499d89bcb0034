"""Shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary project folder, the real dataset mirror, prepared data cached inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path
