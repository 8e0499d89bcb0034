"""Reading raw datasets: checksums, mirrors, downloads, image folders, CIFAR's on-disk format."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from pipeline.data import DataError, prepare, read_source
from pipeline.data.builtin import FAMILIES, builtin
from pipeline.spec.data import CIFAR10_CLASSES, DATASETS, BuiltinDataset, DataSection
from tests.data.conftest import MNIST_TEST_COUNTS, need_mirror, raw_idx

# ---- built-in datasets: mirror, checksums, download ----------------------------------------


@pytest.fixture
def mnist_gz_copy(tmp_path: Path) -> Path:
    """A mirror holding copies of MNIST's four .gz files only."""
    src = need_mirror("MNIST") / "MNIST" / "raw"
    dst = tmp_path / "mirror" / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for gz in src.glob("*.gz"):
        shutil.copy(gz, dst / gz.name)
    return tmp_path / "mirror"


def test_corrupt_byte_is_a_checksum_error_naming_the_file(mnist_gz_copy, make_spec):
    bad = mnist_gz_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_source(make_spec({"dataset": "mnist", "mirror": str(mnist_gz_copy)}).data)
    message = str(err.value)
    assert str(bad) in message and "checksum mismatch" in message
    assert "d53e105ee54ea40749a09fcbcd1e9432" in message  # torchvision's md5 for the file
    assert hashlib.md5(bytes(data)).hexdigest() in message


def test_truncated_file_is_a_checksum_error(mnist_gz_copy, make_spec):
    bad = mnist_gz_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(DataError, match=re.escape("t10k-images-idx3-ubyte.gz")):
        read_source(make_spec({"dataset": "mnist", "mirror": str(mnist_gz_copy)}).data)


def test_missing_file_names_the_path(mnist_gz_copy, make_spec):
    gone = mnist_gz_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(f"{gone} is missing")):
        read_source(make_spec({"dataset": "mnist", "mirror": str(mnist_gz_copy)}).data)


def test_missing_mirror_names_the_path(tmp_path, make_spec):
    nowhere = tmp_path / "no-such-mirror"
    with pytest.raises(DataError, match=re.escape(f"data mirror {nowhere} does not exist")):
        read_source(make_spec({"dataset": "fashion_mnist", "mirror": str(nowhere)}).data)


def test_env_mirror_wins_over_the_spec(tmp_path, make_spec, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_MIRROR", str(tmp_path / "env-mirror"))
    spec = make_spec({"dataset": "mnist", "mirror": str(need_mirror("MNIST"))})
    with pytest.raises(DataError, match=re.escape("env-mirror does not exist")):
        read_source(spec.data)


def test_mirror_with_only_gz_files_is_extracted_into_the_cache(mnist_gz_copy, make_spec):
    raw = read_source(make_spec({"dataset": "mnist", "mirror": str(mnist_gz_copy)}).data)
    x, y = raw.splits["test"]
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert np.array_equal(x[:, 0].numpy(), raw_idx("MNIST", "t10k-images-idx3-ubyte"))
    assert not list(mnist_gz_copy.rglob("*-ubyte"))  # the mirror itself is left alone
    assert raw.checksums["MNIST/raw/train-labels-idx1-ubyte.gz"] == (
        "d53e105ee54ea40749a09fcbcd1e9432"
    )


def test_failed_download_is_a_clear_error(make_spec, monkeypatch):
    # torchvision's real download path, pointed at a port where nothing listens.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    spec = make_spec({"dataset": "mnist"})
    with pytest.raises(DataError) as err:
        read_source(spec.data, retries=2, backoff_s=0.01)
    message = str(err.value)
    assert "downloading mnist" in message and "failed after 2 attempts" in message
    assert "PIPELINE_DATA_MIRROR" in message
    assert "Traceback" not in message


def test_no_download_and_no_mirror_says_so(make_spec):
    with pytest.raises(DataError, match=re.escape("data.download is false")):
        read_source(make_spec({"dataset": "fashion_mnist", "download": False}).data)


# ---- the table of built-in datasets ------------------------------------------------------------


def test_the_schema_offers_exactly_the_table_s_datasets_and_image_folder():
    enum = DataSection.model_json_schema()["properties"]["dataset"]["enum"]
    assert enum == [*DATASETS, "image_folder"]


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_table_entry_has_a_reader_and_published_md5s(name: str):
    reader = builtin(name)
    assert reader.cls.__name__ == DATASETS[name].torchvision
    assert reader.layout in FAMILIES.values()
    files = reader.files()
    assert files and all(re.fullmatch(r"[0-9a-f]{32}", md5) for _, md5 in files)


def test_a_dataset_of_an_unknown_torchvision_family_names_what_to_add(monkeypatch):
    monkeypatch.setitem(DATASETS, "svhn", BuiltinDataset(3, 32, 32, list("0123456789"), "SVHN"))
    with pytest.raises(TypeError, match=r"torchvision.datasets.SVHN is of no family.*FAMILIES"):
        builtin("svhn")


def _idx(array: np.ndarray) -> bytes:
    """The IDX format of the MNIST family: magic (ubyte, ndim), big-endian sizes, the bytes."""
    sizes = b"".join(n.to_bytes(4, "big") for n in array.shape)
    return bytes([0, 0, 8, array.ndim]) + sizes + array.astype(np.uint8).tobytes()


def test_a_torchvision_dataset_of_a_known_family_is_one_table_entry(tmp_path, monkeypatch):
    # KMNIST is not in the table: one entry makes it readable, through torchvision's own reader.
    cls = torchvision.datasets.KMNIST
    monkeypatch.setitem(DATASETS, "kmnist", BuiltinDataset(1, 28, 28, list(cls.classes), "KMNIST"))
    raw = tmp_path / "mirror" / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (7, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    resources = []
    for split, x in images.items():
        labels = np.arange(len(x)) % 10
        for name, array in (
            (f"{split}-images-idx3-ubyte.gz", x),
            (f"{split}-labels-idx1-ubyte.gz", labels),
        ):
            (raw / name).write_bytes(gzip.compress(_idx(array), mtime=0))
            resources.append((name, hashlib.md5((raw / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(cls, "resources", resources)
    section = DataSection.model_construct(dataset="kmnist", mirror=str(tmp_path / "mirror"))
    got = read_source(section)
    assert got.classes == list(cls.classes)
    x, y = got.splits["train"]
    assert x.shape == (7, 1, 28, 28) and np.array_equal(x[:, 0].numpy(), images["train"])
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert got.splits["test"][0].shape == (3, 1, 28, 28)
    assert set(got.checksums) == {f"KMNIST/raw/{name}" for name, _ in resources}


# ---- CIFAR-10 in its own on-disk format ------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 byte strings, as the CIFAR batches were written (by
    Python 2): they load as b'data' with encoding='bytes' and as 'data' with torchvision's
    encoding='latin1'."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str


def _write_batch(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """Six images per batch file, label i % 10; torchvision's md5 lists point at these files
    (in this test only)."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(36, 3072), dtype=np.uint8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        rows = images[b * 6 : (b + 1) * 6]
        _write_batch(
            folder / name,
            {
                "batch_label": f"batch {b + 1}",
                "labels": [(b * 6 + i) % 10 for i in range(6)],
                "data": rows,
                "filenames": [f"img_{b * 6 + i}.png" for i in range(6)],
            },
        )
    _write_batch(
        folder / "batches.meta",
        {
            "num_cases_per_batch": 6,
            "label_names": CIFAR10_CLASSES,
            "num_vis": 3072,
        },
    )

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n in names[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5("batches.meta")})
    return tmp_path / "cifar", images


def test_tiny_cifar_files_are_in_cifar_format(tiny_cifar):
    root, _ = tiny_cifar
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # as the CIFAR page says to read them
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(batch)
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (6, 3072)


def test_cifar10_reads_through_torchvision(tiny_cifar, make_spec):
    root, images = tiny_cifar
    raw = read_source(make_spec({"dataset": "cifar10", "mirror": str(root)}).data)
    x, y = raw.splits["train"]
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.uint8
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    assert np.array_equal(x.numpy(), images[:30].reshape(30, 3, 32, 32))
    assert y.tolist() == [i % 10 for i in range(30)]
    assert raw.splits["test"][0].shape == (6, 3, 32, 32)
    assert raw.classes == CIFAR10_CLASSES
    assert set(raw.checksums) >= {
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/test_batch",
    }


def test_cifar10_selection_and_grayscale(tiny_cifar, make_spec, tmp_path):
    root, _ = tiny_cifar
    spec = make_spec(
        {
            "dataset": "cifar10",
            "mirror": str(root),
            "classes": {"keep": ["dog", "cat"]},
            "color_mode": "grayscale",
            "image_size": [16, 16],
        }
    )
    prepared = prepare(spec, tmp_path / "out")
    y = prepared.split("train")[1]
    assert prepared.classes == ["dog", "cat"] and prepared.image_shape == (1, 16, 16)
    assert y.tolist() == [1, 0, 1, 0, 1, 0]  # labels 3 (cat) and 5 (dog) in source order


def test_cifar10_corrupt_batch_is_named(tiny_cifar, make_spec):
    root, _ = tiny_cifar
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataError, match=re.escape(f"checksum mismatch for {batch}")):
        read_source(make_spec({"dataset": "cifar10", "mirror": str(root)}).data)


# ---- image folders ---------------------------------------------------------------------------

FOLDER_CLASSES = ["bag", "sandal", "shirt"]  # Fashion-MNIST labels 8, 5, 6


@pytest.fixture
def fashion_folder(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Real Fashion-MNIST images as PNG: train/<class>/ (8 each, plus one corrupt file and one
    RGBA image in 'bag') and test/<class>/ (3 each)."""
    need_mirror("FashionMNIST")
    images = raw_idx("FashionMNIST", "t10k-images-idx3-ubyte")
    labels = raw_idx("FashionMNIST", "t10k-labels-idx1-ubyte")
    written: dict[str, list[np.ndarray]] = {}
    for name, label in zip(FOLDER_CLASSES, (8, 5, 6), strict=True):
        picks = images[labels == label][:11]
        written[name] = list(picks[:8])
        for split, rows in (("train", picks[:8]), ("test", picks[8:])):
            (tmp_path / split / name).mkdir(parents=True)
            for i, img in enumerate(rows):
                Image.fromarray(img, "L").save(tmp_path / split / name / f"{i:03d}.png")
    (tmp_path / "train" / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 10
    rgba[14:, :, 3] = 255  # top half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "bag" / "zz_rgba.png")
    (tmp_path / "train" / "bag" / "notes.txt").write_text("not an image: ignored")
    return tmp_path, written


def test_corrupt_image_is_an_error_naming_it(fashion_folder, make_spec):
    root, _ = fashion_folder
    spec = make_spec({"dataset": "image_folder", "path": str(root / "train")})
    with pytest.raises(DataError, match=re.escape("broken.png")) as err:
        read_source(spec.data, spec.path_of)
    assert "skip_corrupt" in str(err.value)


def test_image_folder_counts_pixels_and_skipped(fashion_folder, make_spec):
    _, written = fashion_folder  # relative folders resolve against the spec's folder, the same
    spec = make_spec(
        {
            "dataset": "image_folder",
            "path": "train",
            "test_path": "test",
            "color_mode": "grayscale",
            "skip_corrupt": True,
        }
    )
    raw = read_source(spec.data, spec.path_of)
    assert raw.classes == FOLDER_CLASSES
    x, y = raw.splits["train"]
    assert torch.bincount(y).tolist() == [9, 8, 8]  # bag: 8 + the RGBA image
    assert x.shape == (25, 1, 28, 28)
    assert np.array_equal(x[9, 0].numpy(), written["sandal"][0])  # PNG is lossless
    rgba = x[8, 0]  # zz_rgba.png sorts last in 'bag'
    assert (rgba[:14] == 255).all() and (rgba[14:] == 10).all()  # transparent -> white
    assert raw.skipped == {"train": ["bag/broken.png"], "test": []}
    assert torch.bincount(raw.splits["test"][1]).tolist() == [3, 3, 3]


def test_image_folder_resize_rgb_and_meta(fashion_folder, make_spec, tmp_path):
    root, _ = fashion_folder
    spec = make_spec(
        {
            "dataset": "image_folder",
            "path": str(root / "train"),
            "test_path": str(root / "test"),
            "image_size": [14, 20],
            "skip_corrupt": True,
            "validation": {"fraction": 0.25},
        }
    )
    prepared = prepare(spec, tmp_path / "out")
    assert prepared.image_shape == (3, 14, 20)  # rgb by default
    x, _ = prepared.split("train")
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray sources
    assert prepared.meta["skipped_corrupt"] == {
        "count": 1,
        "files": {"train": ["bag/broken.png"], "test": []},
    }
    counts = prepared.meta["counts"]
    assert counts["val"] == {"bag": 2, "sandal": 2, "shirt": 2}
    assert counts["train"] == {"bag": 7, "sandal": 6, "shirt": 6}


def test_image_folder_validation_path(fashion_folder, make_spec, tmp_path):
    root, _ = fashion_folder
    spec = make_spec(
        {
            "dataset": "image_folder",
            "path": str(root / "train"),
            "skip_corrupt": True,
            "validation": {"path": str(root / "test")},
        }
    )
    prepared = prepare(spec, tmp_path / "out")
    assert set(prepared.splits) == {"train", "val"}
    assert prepared.meta["counts"]["val"] == {"bag": 3, "sandal": 3, "shirt": 3}


def test_empty_class_folder_is_an_error(fashion_folder, make_spec):
    root, _ = fashion_folder
    (root / "test" / "sneaker").mkdir()
    (root / "train" / "sneaker").mkdir()
    spec = make_spec({"dataset": "image_folder", "path": str(root / "test")})
    with pytest.raises(
        DataError, match=re.escape(f"class folder {root / 'test' / 'sneaker'} has no images")
    ):
        read_source(spec.data, spec.path_of)


def test_different_sizes_need_image_size(fashion_folder, make_spec):
    root, _ = fashion_folder
    Image.new("L", (30, 20)).save(root / "test" / "bag" / "big.png")
    spec = make_spec({"dataset": "image_folder", "path": str(root / "test")})
    with pytest.raises(DataError, match=re.escape("set data.image_size")):
        read_source(spec.data, spec.path_of)
