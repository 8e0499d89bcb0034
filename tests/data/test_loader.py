"""BatchLoader: batch counts, every sample once, seeded epoch orders, normalization, the
transform hook, streaming from a memmap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data import BatchLoader, prepare
from tests.data.conftest import need_mirror


def indexed(n: int, c: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is the sample's index (mod 256); labels are the index."""
    y = torch.arange(n)
    x = (y % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, c, 2, 3).contiguous()
    return x, y


def order(loader: BatchLoader) -> list[int]:
    return [i for _, yb in loader for i in yb.tolist()]


@pytest.mark.parametrize(("drop_last", "batches", "last"), [(False, 4, 1), (True, 3, 3)])
def test_batch_count(drop_last, batches, last):
    loader = BatchLoader(*indexed(10), 3, shuffle=True, drop_last=drop_last)
    sizes = [len(yb) for _, yb in loader]
    assert len(loader) == batches == len(sizes) and sizes[-1] == last


def test_every_sample_once_per_epoch_and_images_match_labels():
    loader = BatchLoader(*indexed(1000), 64, shuffle=True, seed=5)
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 2, 3)
            assert torch.allclose(xb[:, 0, 0, 0] * 255, (yb % 256).float(), atol=1e-3)
            seen += yb.tolist()
        assert sorted(seen) == list(range(1000)) and seen != list(range(1000))


def test_epoch_order_depends_on_seed_and_epoch_only():
    data = indexed(500)
    a, b = (
        BatchLoader(*data, 32, shuffle=True, seed=1),
        BatchLoader(*data, 32, shuffle=True, seed=1),
    )
    first, second = order(a), order(a)  # iterating advances the epoch
    assert first != second
    b.set_epoch(1)
    assert order(b) == second  # a resumed run replays epoch 1
    a.set_epoch(0)
    assert order(a) == first
    assert order(BatchLoader(*data, 32, shuffle=True, seed=2)) != first


def test_no_shuffle_keeps_the_order():
    assert order(BatchLoader(*indexed(70), 16)) == list(range(70))


def test_normalization_gives_mean_zero_std_one(make_spec, tmp_path):
    data = {
        "dataset": "mnist",
        "mirror": str(need_mirror("MNIST")),
        "normalize": "standardize",
        "subset": {"train_per_class": 500},
    }
    prepared = prepare(make_spec(data), tmp_path)
    loader = BatchLoader.from_prepared(prepared, "train", 256, shuffle=True)
    total = squares = count = 0.0
    for xb, _ in loader:
        total += xb.double().sum().item()
        squares += xb.double().square().sum().item()
        count += xb.numel()
    mean = total / count
    assert abs(mean) < 1e-4 and abs((squares / count - mean**2) ** 0.5 - 1) < 1e-4


def test_transform_gets_float_batches_and_its_output_is_normalized():
    calls = []

    def transform(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append((batch.dtype, float(batch.min()), float(batch.max()), generator))
        return torch.full_like(batch, 0.5)

    x, y = indexed(300, c=3)
    loader = BatchLoader(x, y, 100, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.25], transform=transform)
    batches = [xb for xb, _ in loader]
    assert len(calls) == 3
    dtype, low, high, gen = calls[-1]
    assert dtype == torch.float32 and 0.0 <= low <= high <= 1.0
    assert isinstance(gen, torch.Generator)
    expected = torch.tensor([0.8, 0.6, 0.8]).view(1, 3, 1, 1).expand_as(batches[0])
    assert torch.allclose(batches[0], expected)


def test_transform_generator_is_seeded_per_epoch():
    def noise(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return batch + torch.rand(batch.shape, generator=generator)

    data = indexed(64)
    a, b = (
        BatchLoader(*data, 64, transform=noise, seed=3),
        BatchLoader(*data, 64, transform=noise, seed=3),
    )
    first = next(iter(a))[0]
    assert torch.equal(first, next(iter(b))[0])
    assert not torch.equal(first, next(iter(a))[0])  # epoch 1 draws anew


def test_channels_last_batches():
    x, y = indexed(20, c=3)
    xb, _ = next(iter(BatchLoader(x, y, 8, memory_format=torch.channels_last)))
    assert xb.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("drop_last", [False, True])
def test_streaming_from_a_memmap(tmp_path, drop_last):
    x, y = indexed(103)
    np.save(tmp_path / "x.npy", x.numpy())
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    loader = BatchLoader(
        mapped, y, 10, shuffle=True, seed=4, drop_last=drop_last, stream=True, chunk_samples=25
    )
    assert loader.stream
    seen = []
    for xb, yb in loader:
        assert torch.allclose(xb[:, 0, 0, 0] * 255, yb.float(), atol=1e-3)
        seen += yb.tolist()
    assert len(seen) == (100 if drop_last else 103) and len(set(seen)) == len(seen)
    loader.set_epoch(0)
    again = order(loader)
    assert again == seen and again != sorted(again)


def test_small_memmap_is_loaded_not_streamed(tmp_path):
    x, y = indexed(30)
    np.save(tmp_path / "x.npy", x.numpy())
    loader = BatchLoader(np.load(tmp_path / "x.npy", mmap_mode="r"), y, 7, shuffle=True)
    assert not loader.stream and sorted(order(loader)) == list(range(30))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False], ids=["resident", "pinned"])
def test_cuda_batches_equal_the_cpu_batches(resident):
    data = indexed(300, c=3)
    cpu = BatchLoader(*data, 64, shuffle=True, seed=3, mean=[0.5] * 3, std=[0.25] * 3)
    gpu = BatchLoader(
        *data,
        64,
        shuffle=True,
        seed=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        device="cuda",
        resident=resident,
    )
    for _ in range(2):  # the pinned path double-buffers: a second epoch reuses its buffers
        pairs = list(zip(cpu, gpu, strict=True))
        for (xc, yc), (xg, yg) in pairs:
            assert xg.device.type == "cuda" and yg.device.type == "cuda"
            assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
