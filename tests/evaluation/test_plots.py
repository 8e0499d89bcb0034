"""The pictures: valid PNGs of a size a person can read, for 10 classes and for 100."""

import numpy as np
from PIL import Image

from pipeline.evaluation import curves, plots


def _scores(k: int, n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per_class)
    logits = rng.normal(size=(len(labels), k)) + 2.5 * np.eye(k)[labels]
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels


def _confusion(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    return np.bincount(labels * k + probs.argmax(1), minlength=k * k).reshape(k, k)


def test_the_confusion_matrix_png_of_100_classes_keeps_names_legible(tmp_path):
    # (10 classes: tests/evaluation/test_tta.py checks the stage's confusion.png)
    probs, labels = _scores(100, 10)
    path = tmp_path / "confusion.png"
    plots.confusion_png(_confusion(probs, labels), [f"class_{i}" for i in range(100)], path, "t")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    # two panels side by side; each of the 100 rows gets over 10 pixels, names 7 points or more
    assert height >= 100 * 10 + 200 and 1.8 * height < width < 4000
    assert plots._label_size(100, 17) >= 7 and plots._label_size(10, 7.5) == 10


def test_the_roc_pr_png_is_a_valid_image(tmp_path):
    # past LEGEND_UP_TO classes (grey lines); tests/evaluation/test_tta.py draws 10 with a legend
    probs, labels = _scores(12, 30)
    path = tmp_path / "roc.png"
    plots.curves_png(curves.compute(probs, labels, [f"c{i}" for i in range(12)]), path, "t")
    with Image.open(path) as image:
        image.verify()
        assert image.size == (1300, 600)
