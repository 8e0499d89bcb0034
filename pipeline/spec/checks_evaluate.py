"""Cross-field checks of the ``evaluate`` section."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.spec.check_registry import check
from pipeline.spec.errors import Problem
from pipeline.spec.spec import Spec


@check("tta-augment-needs-transforms")
def _tta_augment(spec: Spec) -> Iterator[Problem]:
    """Test-time augmentation passes apply the augment section's transforms; without any, every
    pass would repeat the plain prediction."""
    tta = spec.evaluate.tta
    if tta is not None and tta.augment and not spec.augment.transforms:
        yield Problem(
            f"{tta.augment} passes would apply augment.transforms, and there are none",
            ("evaluate", "tta", "augment"),
            hint="add augment.transforms (e.g. [{type: rotation, degrees: 10}]), or tta.augment: 0",
        )
