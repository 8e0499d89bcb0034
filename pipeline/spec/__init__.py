"""The spec language: load, validate and resolve experiment specs (imports no torch).

Public API::

    from pipeline.spec import load_spec, SpecError
    spec = load_spec("specs/mnist_convnet.yaml", ["train.epochs=1"])

``SpecError.problems`` lists every located problem of the file at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Spec": "pipeline.spec.spec",
    "load_spec": "pipeline.spec.load",
    "load_spec_text": "pipeline.spec.load",
    "to_yaml": "pipeline.spec.load",
    "SpecError": "pipeline.spec.errors",
    "Problem": "pipeline.spec.errors",
    "Mark": "pipeline.spec.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so importing a small part (errors, the YAML reader) does not build every model.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.spec' has no attribute {name!r}")
