"""The class checks: names in data.classes and train.class_weights, merged groups, weights per
class, the focal loss's options; each located, with a did-you-mean where one fits."""

from __future__ import annotations

from pipeline.spec import load_spec

FASHION = """\
name: t
data:
  dataset: fashion_mnist
  classes:
    merge:
      footwear: [sandal, sneaker, ankle_boot]
      top: [t_shirt_top, shirt, pullover]
model: {{layers: [{{type: flatten}}, {{type: dense, units: {units}}}]}}
train: {{{train}}}
"""


def fashion(units: int = 2, train: str = "") -> str:
    return FASHION.format(units=units, train=train)


def by_code(found) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in found:
        out.setdefault(p.code, []).append(p)
    return out


def test_a_merge_sets_the_classes_and_the_output_width_follows(write, problems):
    spec = load_spec(write(fashion(train="class_weights: {footwear: 2, top: 0.5}")))
    assert spec.num_classes() == 2
    (p,) = problems(fashion(units=10))
    assert p.code == "output-matches-classes" and p.path == ("model", "layers", 1, "units")
    assert (
        "has 10 units but the data has 2 classes" in p.message
        and p.hint == "use units: 2 (or 1 with a sigmoid for binary)"
    )


def test_misspelt_classes_are_located_with_a_suggestion(problems):
    text = fashion(train="class_weights: {footwear: 2, tops: 1}").replace("sneaker", "sneakr")
    found = by_code(problems(text))
    merged, weights = found["class-names"]
    assert merged.path == ("data", "classes", "merge", "footwear", 1)
    assert (merged.mark.line, merged.mark.column) == (6, 26)  # 1-based, at 'sneakr'
    assert merged.hint == "did you mean 'sneaker'?"
    assert weights.path == ("train", "class_weights", "tops")
    assert "valid: footwear, top" in weights.message and weights.hint == "did you mean 'top'?"


def test_keep_and_drop_names_are_checked_too(problems):
    merge = FASHION[FASHION.index("    merge:") : FASHION.index("model:")]
    text = fashion().replace(merge, "    keep: [sandal, 12]\n")
    (p,) = problems(text)
    assert p.code == "class-names" and p.path == ("data", "classes", "keep", 1)
    assert "class index 12 is out of range" in p.message


def test_a_class_in_two_merged_classes_is_an_error(problems):
    (p,) = problems(fashion().replace("pullover]", "pullover, sandal]"))
    assert p.code == "merge-groups-disjoint" and p.path == ("data", "classes", "merge", "top", 3)


def test_keep_drop_and_merge_are_exclusive(problems):
    (p,) = problems(fashion().replace("    merge:", "    keep: [bag]\n    merge:"))
    assert "exactly one of 'keep', 'drop' or 'merge'" in p.message


def test_a_weight_list_needs_one_weight_per_class(problems):
    (p,) = problems(fashion(train="class_weights: [1, 2, 3]"))
    assert p.code == "class-weights-match-classes" and p.path == ("train", "class_weights")
    assert "3 class weights for 2 classes" in p.message


def test_weights_are_positive_and_balanced_is_the_only_word(problems):
    found = problems(fashion(train="class_weights: [1, -2]"))
    assert found[0].path == ("train", "class_weights", 1)
    found = problems(fashion(train="class_weights: balance"))
    assert found[0].path[:2] == ("train", "class_weights") and "balanced" in found[0].message


def test_focal_options_go_with_the_focal_loss(problems, write):
    (p,) = problems(fashion(train="focal_gamma: 1"))
    assert p.code == "focal-options" and p.path == ("train", "focal_gamma")
    (p,) = problems(fashion(train="loss: focal, label_smoothing: 0.1"))
    assert p.code == "focal-options" and p.path == ("train", "label_smoothing")
    spec = load_spec(write(fashion(units=1, train="loss: focal, focal_gamma: 0.5")))
    assert spec.train.loss == "focal" and spec.train.focal_gamma == 0.5  # one unit fits too


def test_the_sampler_is_a_choice(problems):
    (p,) = problems(fashion(train="sampler: balancd"))
    assert p.path == ("train", "sampler") and p.hint == "did you mean 'balanced'?"
