"""evaluate.tta and evaluate.curves in the schema: bad input located, with what is valid."""

from pipeline.spec import load_spec
from tests.spec.conftest import BASE


def test_tta_augment_without_transforms_is_located_with_a_hint(problems):
    found = problems(BASE + "evaluate:\n  tta: {flip: true, augment: 4}\n")
    (p,) = found
    assert (p.code, p.severity) == ("tta-augment-needs-transforms", "error")
    assert p.path == ("evaluate", "tta", "augment")
    assert (p.mark.line, p.mark.column) == (9, 30)  # the value 4 on the tta line
    assert "augment.transforms" in p.hint


def test_tta_typos_and_ranges_are_located_with_what_is_valid(problems):
    (typo,) = problems(BASE + "evaluate: {tta: {flipp: true}}\n")
    assert typo.path == ("evaluate", "tta", "flipp") and typo.hint == "did you mean 'flip'?"
    (big,) = problems(BASE + "evaluate: {tta: {augment: 65}}\n")
    assert big.path == ("evaluate", "tta", "augment") and "64" in big.message
    (curves,) = problems(BASE + "evaluate: {curves: maybe}\n")
    assert curves.path == ("evaluate", "curves")


def test_tta_with_transforms_loads(write):
    text = BASE + "augment: {transforms: [{type: rotation, degrees: 10}]}\n"
    spec = load_spec(write(text + "evaluate: {tta: {augment: 2}}\n"))
    assert (spec.evaluate.tta.flip, spec.evaluate.tta.augment) == (False, 2)
    assert spec.evaluate.curves and load_spec(write(text)).evaluate.tta is None
