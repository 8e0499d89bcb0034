"""Batched per-sample augmentation: exact geometry, per-sample randomness, reproducibility."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.augment import (
    AUGMENT_BUILDERS,
    Warp,
    affine_grid,
    apply_affine,
    build_augment,
    offline_augment,
    offline_index,
    rotation_matrix,
    shear_matrix,
    shift_matrix,
    zoom_matrix,
)
from pipeline.data.preview import preview_grid
from pipeline.registry import Builders
from pipeline.spec import load_spec
from pipeline.spec.base import TRANSFORMS, Kind, Kinds
from pipeline.spec.data import AugmentSection

ROOT = Path(__file__).resolve().parents[2]

# One entry per transform type, with parameters large enough to change every sample.
EVERY: dict[str, dict[str, Any]] = {
    "rotation": {"degrees": 30},
    "shift": {"width": 0.2, "height": 0.2},
    "shear": {"degrees": 20},
    "zoom": {"range": 0.3},
    "horizontal_flip": {"p": 0.5},
    "vertical_flip": {"p": 0.5},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2},
    "random_crop": {"padding": 4},
    "random_erasing": {"p": 1.0},
    "auto_augment": {},
    "rand_augment": {},
    "trivial_augment": {},
}


def aug(*transforms: dict[str, Any]):
    section = AugmentSection.model_validate({"transforms": list(transforms)})
    out = build_augment(section)
    assert out is not None
    return out


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def images(n: int = 16, c: int = 3, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images: structure every transform visibly changes."""
    g = gen(seed)
    small = torch.rand(n, c, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")


def test_registry_covers_every_schema_transform() -> None:
    assert set(AUGMENT_BUILDERS) == set(TRANSFORMS.kinds.values())
    assert AUGMENT_BUILDERS.missing() == []
    assert set(EVERY) == set(TRANSFORMS.names())


def test_a_transform_kind_without_a_builder_is_named_by_the_completeness_check() -> None:
    kinds = Kinds("augmentation")

    @kinds.register
    class Blur(Kind):
        type: Literal["blur"] = "blur"

    @kinds.register
    class Sharpen(Kind):
        type: Literal["sharpen"] = "sharpen"

    table: Builders[Any] = Builders(kinds, "augmentation")
    table.register(Sharpen)(lambda t: t)
    with pytest.raises(TypeError, match=r"augmentation kinds Blur \(blur\)"):
        table.check_complete()
    table.register(Blur)(lambda t: t)
    table.check_complete()
    assert table[Blur()] is not table[Sharpen()]


def test_builders_are_keyed_by_schema_class_not_by_name() -> None:
    rotation = AugmentSection.model_validate({"transforms": [{"type": "rotation", "degrees": 5}]})
    assert (
        AUGMENT_BUILDERS[rotation.transforms[0]] is AUGMENT_BUILDERS[type(rotation.transforms[0])]
    )
    with pytest.raises(TypeError, match="no augmentation builder for str"):
        AUGMENT_BUILDERS["rotation"]  # type: ignore[index]


def test_importing_the_augment_package_fails_naming_a_schema_kind_without_a_builder() -> None:
    code = (
        "from typing import Literal\n"
        "from pipeline.spec.base import TRANSFORMS\n"
        "from pipeline.spec.data import TransformBase\n"
        "@TRANSFORMS.register\n"
        "class Posterize(TransformBase):\n"
        "    type: Literal['posterize'] = 'posterize'\n"
        "import pipeline.data.augment\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert (
        "TypeError: no augmentation builder for the spec's augmentation kinds Posterize (posterize)"
        in (done.stderr)
    )


def test_no_transforms_builds_nothing() -> None:
    assert build_augment(AugmentSection()) is None


@pytest.mark.parametrize("kind,dim", [("horizontal_flip", -1), ("vertical_flip", -2)])
def test_flip_p1_is_torch_flip_and_p0_is_identity(kind: str, dim: int) -> None:
    x = images()
    assert torch.equal(aug({"type": kind, "p": 1.0})(x, gen()), torch.flip(x, [dim]))
    assert torch.equal(aug({"type": kind, "p": 0.0})(x, gen()), x)


def test_tiny_rotation_is_identity() -> None:
    x = images()
    out = aug({"type": "rotation", "degrees": 1e-6})(x, gen())
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_rotation_matrix_90_degrees_is_rot90() -> None:
    x = images(2, 3, 9, 9)
    out = apply_affine(x, rotation_matrix(torch.tensor([90.0, -90.0])), Warp("constant"))
    torch.testing.assert_close(out[0], torch.rot90(x[0], 1, [-2, -1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(x[1], -1, [-2, -1]), atol=1e-5, rtol=0)


def test_shift_matrix_moves_content_by_whole_pixels() -> None:
    x = images(1, 1, 12, 16)
    move = shift_matrix(torch.tensor([3.0]), torch.tensor([-2.0]))
    out = apply_affine(x, move, Warp("constant"))
    torch.testing.assert_close(out[..., :-2, 3:], x[..., 2:, :-3], atol=1e-6, rtol=0)
    assert out[..., :, :3].abs().max() == 0  # constant fill: zeros where the content left
    assert out[..., -2:, :].abs().max() == 0
    nearest = apply_affine(
        x, shift_matrix(torch.tensor([3.0]), torch.tensor([0.0])), Warp("nearest")
    )
    torch.testing.assert_close(nearest[..., :, :3], x[..., :, :1].expand(-1, -1, -1, 3))


def test_constant_fill_value_fills_where_the_content_left() -> None:
    x = images(1, 1, 12, 16)
    out = apply_affine(
        x, shift_matrix(torch.tensor([3.0]), torch.tensor([0.0])), Warp("constant", fill_value=0.75)
    )
    torch.testing.assert_close(out[..., :, :3], torch.full_like(out[..., :, :3], 0.75))
    torch.testing.assert_close(out[..., :, 3:], x[..., :, :-3], atol=1e-6, rtol=0)


def test_nearest_interpolation_only_copies_input_values() -> None:
    x = images(4, 1, 16, 16)
    m = rotation_matrix(torch.tensor([13.0, -7.0, 25.0, 3.0]))
    nearest = apply_affine(x, m, Warp("constant", interpolation="nearest"))
    bilinear = apply_affine(x, m, Warp("constant"))
    for i in range(4):  # every output value is one of its image's input values (or the fill)
        allowed = torch.cat([x[i].flatten(), torch.zeros(1)])
        assert torch.isin(nearest[i].flatten(), allowed).all()
    assert not torch.isin(bilinear[0].flatten(), torch.cat([x[0].flatten(), torch.zeros(1)])).all()


def test_zoom_range_pair_draws_inside_its_bounds() -> None:
    x = torch.zeros(64, 1, 20, 20)
    x[:, :, 9:11, :] = 1.0  # a horizontal bar through the centre: zooming in thickens it
    out = aug({"type": "zoom", "range": [0.5, 0.8], "fill": "constant"})(x, gen())
    thickness = (out[:, 0, :, 10] > 0.5).sum(dim=1).float()
    assert thickness.min() >= 2  # factors < 1 only zoom in: the bar never thins
    assert thickness.max() > 2


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ({"type": "zoom", "range": [1.2, 0.9]}, "lower bound is above the upper"),
        ({"type": "rotation", "degrees": 10, "fill_value": 0.5}, "fill: constant only"),
    ],
)
def test_bad_geometric_options_are_spec_errors(transform: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentSection.model_validate({"transforms": [transform]})


def test_zoom_and_shear_matrices() -> None:
    # zoom 0.5 about the centre of a 4x4 ramp: output column j reads input 0.5 (j - 1.5) + 1.5
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    out = apply_affine(x, zoom_matrix(torch.tensor([0.5]), torch.tensor([1.0])), Warp("nearest"))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.75, 1.25, 1.75, 2.25]))
    # Keras's shear: y_in = y - sin(s) x (centred), so a vertical ramp tilts along the row
    y = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 5).contiguous()
    sheared = apply_affine(y, shear_matrix(torch.tensor([30.0])), Warp("nearest"))
    torch.testing.assert_close(sheared[0, 0, 2], 2 - 0.5 * torch.tensor([-2.0, -1, 0, 1, 2]) * 1.0)


@pytest.mark.parametrize("kind", sorted(EVERY))
def test_parameters_differ_per_sample(kind: str) -> None:
    x = images(1).expand(32, -1, -1, -1).contiguous()  # 32 identical images
    out = aug({"type": kind, **EVERY[kind]})(x, gen())
    distinct = {tuple(o.flatten()[::7].tolist()) for o in out}
    assert len(distinct) > 1 if "flip" in kind else len(distinct) > 16


@pytest.mark.parametrize("kind", sorted(EVERY))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_and_seed(kind: str, dtype: torch.dtype) -> None:
    x = images(8).to(dtype)
    a = aug({"type": kind, **EVERY[kind]})
    out = a(x, gen(1))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, a(x, gen(1)))
    assert not torch.equal(out, a(x, gen(2)))


def test_probability_is_per_sample() -> None:
    x = images(64)
    out = aug({"type": "rotation", "degrees": 40, "p": 0.5})(x, gen())
    same = (out == x).flatten(1).all(1)
    assert 10 < int(same.sum()) < 54  # some untouched (bit-exact), some rotated


def test_keras_spec_runs_with_one_warp() -> None:
    spec = load_spec(ROOT / "specs" / "cats_dogs_dropout_augment.yaml")
    a = build_augment(spec.augment)
    assert a is not None and a.names == ["affine[rotation+shift+shear+zoom+horizontal_flip]"]
    x = images(4, 3, 30, 30)
    assert a(x, gen()).shape == x.shape


def test_affine_grid_matches_torch() -> None:
    theta = torch.randn(5, 2, 3, generator=gen(), dtype=torch.float64)
    expected = torch.nn.functional.affine_grid(theta, [5, 1, 7, 9], align_corners=False)
    torch.testing.assert_close(affine_grid(theta, 7, 9), expected)


def test_flip_inside_a_warp_is_still_a_flip() -> None:
    x = images()
    a = aug({"type": "rotation", "degrees": 1e-6}, {"type": "horizontal_flip", "p": 1.0})
    assert a.names == ["affine[rotation+horizontal_flip]"]
    torch.testing.assert_close(a(x, gen()), torch.flip(x, [-1]), atol=1e-4, rtol=0)


def test_fill_change_splits_the_warp() -> None:
    a = aug({"type": "rotation", "degrees": 5, "fill": "constant"}, {"type": "zoom", "range": 0.1})
    assert len(a.stages) == 2


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    pad = 3
    x = images(16, 2, 10, 12)
    out = aug({"type": "random_crop", "padding": pad})(x, gen())
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 12])
        ]
        assert hits, f"sample {i} is no window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 4


@pytest.mark.parametrize("scale", [(0.05, 0.2), (0.4, 0.9)])
def test_random_erasing_blanks_one_rectangle_within_scale(scale: tuple[float, float]) -> None:
    x = torch.ones(32, 3, 40, 40)
    spec = {"type": "random_erasing", "p": 1.0, "scale": list(scale), "value": 0.0}
    out = aug(spec)(x, gen())
    erased_count = 0
    for o in out:
        erased = (o == 0).all(0)
        assert (o[:, ~erased] == 1).all()
        if not erased.any():
            continue  # torchvision's rule: no erasing when 10 tries find no rectangle that fits
        erased_count += 1
        rows, cols = erased.any(1).nonzero()[:, 0], erased.any(0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert int(erased.sum()) == h * w  # a full rectangle
        assert int(rows[-1] - rows[0]) + 1 == h and int(cols[-1] - cols[0]) + 1 == w
        assert h < 40 and w < 40
        # Rounding h and w moves the area by at most about one row plus one column.
        slack = (h + w + 1) / 1600
        assert scale[0] - slack <= h * w / 1600 <= scale[1] + slack
    assert erased_count >= 24


def test_brightness_scales_the_mean_within_range() -> None:
    x = images(32) * 0.6  # no value reaches 1 after a 1.5x brightness: no clipping
    out = aug({"type": "color_jitter", "brightness": 0.5})(x, gen())
    ratio = out.mean((1, 2, 3)) / x.mean((1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 1.5 + 1e-5
    assert ratio.std() > 0.1  # one factor per sample
    torch.testing.assert_close(out / x, ratio[:, None, None, None].expand_as(x))


def test_grayscale_skips_saturation_and_hue() -> None:
    x = images(8, 1)
    assert torch.equal(aug({"type": "color_jitter", "saturation": 0.9, "hue": 0.5})(x, gen()), x)


def test_hue_shift_keeps_gray_and_luma() -> None:
    gray = torch.full((4, 3, 5, 5), 0.4)
    assert torch.allclose(aug({"type": "color_jitter", "hue": 0.5})(gray, gen()), gray, atol=1e-6)


@pytest.mark.parametrize("kind", ["auto_augment", "rand_augment", "trivial_augment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_policies_run_and_reproduce(kind: str, channels: int) -> None:
    x = images(6, channels, 32, 32)
    a = aug({"type": kind})
    out = a(x, gen(5))
    assert out.shape == x.shape
    assert torch.equal(out, a(x, gen(5)))
    assert torch.equal(out * 255, (out * 255).round())  # came back from uint8


def test_offline_augment_keeps_originals_first() -> None:
    x = (images(10) * 255).round().to(torch.uint8)
    section = AugmentSection.model_validate(
        {"mode": "offline", "factor": 3, "transforms": [{"type": "rotation", "degrees": 20}]}
    )
    out = offline_augment(x, section, seed=0, batch_size=4)
    assert out.shape == (40, 3, 24, 24) and out.dtype == torch.uint8
    assert torch.equal(out[:10], x)
    assert not torch.equal(out[10:20], x) and not torch.equal(out[10:20], out[20:30])
    assert torch.equal(offline_index(10, 3), torch.arange(10).repeat(4))
    assert torch.equal(out, offline_augment(x, section, seed=0, batch_size=4))


def test_preview_grid_png(tmp_path: Path) -> None:
    x = (images(12, 1, 28, 28) * 255).to(torch.uint8)
    path = preview_grid(x, aug({"type": "rotation", "degrees": 30}), tmp_path / "p" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (8 * 30 + 2, 5 * 30 + 2)
        top_left = torch.from_numpy(np.array(im.convert("L").crop((2, 2, 30, 30))))
    assert torch.equal(top_left, x[0, 0])  # first row: the originals


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_sample_on_cuda() -> None:
    x = images(1).expand(16, -1, -1, -1).contiguous().cuda()
    a = aug(*({"type": k, **EVERY[k]} for k in EVERY if not k.endswith("augment")))
    out = a(x, gen(0, "cuda"))
    assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape
    assert len({tuple(o.flatten()[::7].tolist()) for o in out.cpu()}) == 16
    assert torch.equal(out, a(x, gen(0, "cuda")))
    assert a(x, gen(0)).device == x.device  # a CPU generator drives a CUDA batch too


def test_rejects_uint8_batches() -> None:
    with pytest.raises(ValueError, match="float"):
        aug({"type": "rotation", "degrees": 5})(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), gen())


def test_math_reference() -> None:
    # 30 degrees: the matrix holds cos and sin of the angle (a guard on degrees vs radians).
    m = rotation_matrix(torch.tensor([30.0]))[0]
    assert math.isclose(float(m[0, 0]), math.sqrt(3) / 2, rel_tol=1e-6)
    assert math.isclose(float(m[1, 0]), 0.5, rel_tol=1e-6)


def test_transforms_with_different_warps_do_not_share_a_grid_sample() -> None:
    same = aug({"type": "rotation", "degrees": 10}, {"type": "zoom", "range": 0.1})
    split = aug(
        {"type": "rotation", "degrees": 10, "interpolation": "nearest"},
        {"type": "zoom", "range": 0.1},
    )
    assert same.names == ["affine[rotation+zoom]"]
    assert split.names == ["affine[rotation]", "affine[zoom]"]
