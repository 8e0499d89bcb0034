"""Batches from prepared uint8 images, the way the fast CIFAR/MNIST trainers do it: the whole set
in memory (on the GPU when it fits), a seeded ``randperm`` per epoch, batches by indexing, no
DataLoader and no workers. On the 2-core CPU machine an MNIST epoch of batches costs ~0.03 s,
under 0.3% of a training epoch, against ~0.4 s for ``DataLoader(TensorDataset)`` and ~2 s with
2 workers (batch 64; benchmarks/loader.py, figures in benchmarks/README.md).

Each batch: uint8 -> float32 on the target device, / 255, then ``transform(batch, generator)``
(augmentation on [0, 1] floats), then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from pipeline.data.sampler import balanced_order, balanced_sample_weights
from pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from pipeline.data.prepare import Prepared

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

_ORDER_STREAM, _TRANSFORM_STREAM = 0, 1
_CHUNK_BYTES = 64 << 20  # streaming reads this much contiguous data at a time


def epoch_seed(seed: int, epoch: int, stream: int, rank: int | None = None) -> int:
    """A well-mixed 63-bit seed for (seed, epoch, purpose[, rank of a distributed run]): epoch
    e's order depends on nothing else, so a resumed run replays it exactly."""
    key = [seed % 2**64, epoch, stream] + ([] if rank is None else [rank])
    seq = np.random.SeedSequence(key)
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def batches_per_epoch(n: int, batch_size: int, drop_last: bool, what: str = "the data") -> int:
    """Batches an epoch of ``n`` samples gives; a ConfigurationError naming the sizes when that
    is none (an epoch would train on nothing and report a loss of 0)."""
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    if count == 0:
        why = f"batch_size {batch_size} with drop_last" if n else "it is empty"
        raise ConfigurationError(
            f"{what} has {n} samples: {why} leaves no batch, so an epoch would do nothing"
            + (f"; use a batch_size of at most {n} or drop_last: false" if n else "")
        )
    return count


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


class BatchLoader:
    """An iterable of (images float32 N,C,H,W, labels int64 N) batches on ``device``.

    ``resident``: on CUDA keep all uint8 images on the GPU ("auto": when they take under half of
    the free GPU memory), else copy each batch through pinned buffers. ``stream``: read a memmap
    in contiguous chunks (shuffled chunk order, shuffled within each chunk) instead of loading it
    all; None: stream a memmap larger than half of the free RAM. An epoch without a batch (no
    samples, or fewer than ``batch_size`` with ``drop_last``) is a ConfigurationError naming
    ``name`` (the split) and the sizes.

    In a distributed run of W processes, rank r passes ``shard=(r, W)`` for training: every
    rank draws the same global order, and each global batch of ``batch_size`` is split between
    the ranks (rank r takes its every W-th sample), so the ranks together train on exactly the
    batches one process would. Images are gathered batch by batch from the prepared memmap,
    never copied whole into a rank's memory (on CUDA they are kept on the rank's GPU when they
    fit, as for one process). A last batch with fewer samples than ranks is left out (at most
    W - 1 samples an epoch). For evaluation, ``part=(r, W)`` gives rank r its contiguous part
    of the split (a view of the memmap: only that part is read); their metrics add up.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: Transform | None = None,
        resident: bool | Literal["auto"] = "auto",
        stream: bool | None = None,
        chunk_samples: int | None = None,
        memory_format: torch.memory_format | None = None,
        name: str = "the data",
        shard: tuple[int, int] | None = None,
        part: tuple[int, int] | None = None,
        balanced: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        batches_per_epoch(len(y), batch_size, drop_last, name)
        if part is not None and part[1] > 1:  # this rank's contiguous part; views, not copies
            lo, hi = len(y) * part[0] // part[1], len(y) * (part[0] + 1) // part[1]
            x, y = x[lo:hi], y[lo:hi]
        self.rank, self.world = shard if shard is not None else (0, 1)
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} does not divide by {self.world} ranks")
        if str(x.dtype) not in ("uint8", "torch.uint8"):
            # The /255 and normalization run in place on each batch's float copy.
            raise ValueError(f"images must be uint8 (as prepare writes them), not {x.dtype}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.transform, self.memory_format = transform, memory_format
        self.epoch = 0
        self.n = len(y)
        self.y = (torch.from_numpy(np.array(y)) if isinstance(y, np.ndarray) else y).long()
        self._weights = balanced_sample_weights(self.y) if balanced else None
        if stream is None:
            stream = isinstance(x, np.memmap) and x.nbytes > _available_ram() // 2
        self.stream = stream and self.world == 1
        if balanced and (self.stream or not shuffle):
            raise ConfigurationError(
                f"train.sampler: balanced draws from {name} in memory, in a shuffled order; "
                + ("it is larger than half the free RAM" if self.stream else "it is not shuffled")
            )
        self._rows: np.ndarray | None = None  # a rank's source of gathered batches
        if self.world > 1 and isinstance(x, np.ndarray):
            on_gpu = self.device.type == "cuda" and resident is not False
            if on_gpu and (resident is True or x.nbytes < self._free_gpu() // 2):
                self.x = torch.from_numpy(np.array(x)).to(self.device)
            else:
                self._rows, self.x = x, None
        elif self.stream:
            self._source = x
            per_sample = max(1, int(np.prod(x.shape[1:])) * x.dtype.itemsize)
            self.chunk_samples = max(batch_size, chunk_samples or _CHUNK_BYTES // per_sample)
            self.x = None
        else:
            # np.array copies a memmap into RAM; from_numpy shares an ordinary array.
            self.x = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x
            if self.device.type == "cuda" and self._fits_on_device(resident):
                self.x = self.x.to(self.device)
        on = self.x.device if self.x is not None else torch.device("cpu")
        self.y = self.y.to(on)
        self._norm = self._normalization(mean, std, x.shape[1])
        self._pinned: list[torch.Tensor] = []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    @classmethod
    def from_prepared(
        cls, prepared: Prepared, split: str, batch_size: int, **kwargs: object
    ) -> BatchLoader:
        """A loader over one split, normalized with the dataset's mean/std from meta.json."""
        x, y = prepared.split(split)
        kwargs.setdefault("mean", prepared.mean)
        kwargs.setdefault("std", prepared.std)
        kwargs.setdefault("name", f"the {split} split")
        return cls(x, y, batch_size, **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        count = math.ceil(self.n / self.batch_size)
        if 0 < self.n % self.batch_size < self.world:  # too few for every rank: left out
            count -= 1
        return count

    def global_batch(self, step: int) -> int:
        """Samples in global batch ``step`` (all ranks' shares together)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch ``epoch`` (each iteration then advances by one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order_gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, _ORDER_STREAM))
        tgen = None
        if self.transform is not None:  # each rank draws its own augmentations
            tgen = torch.Generator(self.device)
            rank = self.rank if self.world > 1 else None
            tgen.manual_seed(epoch_seed(self.seed, epoch, _TRANSFORM_STREAM, rank))
        raw = self._chunked(order_gen) if self.stream else self._indexed(order_gen)
        for xb, yb in raw:
            yield self._finish(xb, yb, tgen)

    # ---- where uint8 batches come from ----------------------------------------------------

    def _indexed(self, gen: torch.Generator) -> Iterator[Batch]:
        if self.world > 1:
            yield from self._sharded(gen)
            return
        assert self.x is not None
        order = self._order(gen).to(self.x.device) if self.shuffle else None
        bs = self.batch_size
        for k in range(len(self)):
            if order is None:  # contiguous slices: views, no gather
                yield self.x[k * bs : (k + 1) * bs], self.y[k * bs : (k + 1) * bs]
            else:
                idx = order[k * bs : (k + 1) * bs]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def _order(self, gen: torch.Generator) -> torch.Tensor:
        """An epoch's order: a permutation, or the balanced sampler's draw."""
        if self._weights is not None:
            return balanced_order(self._weights, self.n, gen)
        return torch.randperm(self.n, generator=gen)

    def _sharded(self, gen: torch.Generator) -> Iterator[Batch]:
        """This rank's share of each global batch (its every W-th sample), gathered."""
        order = self._order(gen) if self.shuffle else torch.arange(self.n)
        bs = self.batch_size
        for k in range(len(self)):
            idx = order[k * bs : (k + 1) * bs][self.rank :: self.world]
            if self._rows is not None:  # only these rows are read from the memmap
                yield torch.from_numpy(self._rows[idx.numpy()]), self.y.index_select(0, idx)
            else:
                assert self.x is not None
                on = idx.to(self.x.device)
                yield self.x.index_select(0, on), self.y.index_select(0, on)

    def _chunked(self, gen: torch.Generator) -> Iterator[Batch]:
        """Contiguous chunks of the memmap, in shuffled order, each shuffled inside; batches
        run across chunk borders so every sample comes once and len() holds."""
        starts = list(range(0, self.n, self.chunk_samples))
        if self.shuffle:
            starts = [starts[i] for i in torch.randperm(len(starts), generator=gen).tolist()]
        bs, emitted = self.batch_size, 0
        left_x = left_y = None
        for s in starts:
            e = min(s + self.chunk_samples, self.n)
            cx = torch.from_numpy(np.array(self._source[s:e]))  # one contiguous read
            cy = self.y[s:e]
            if self.shuffle:
                p = torch.randperm(e - s, generator=gen)
                cx, cy = cx[p], cy[p]
            if left_x is not None:
                cx, cy = torch.cat([left_x, cx]), torch.cat([left_y, cy])
            full = len(cy) // bs * bs
            for i in range(0, full, bs):
                emitted += 1
                yield cx[i : i + bs], cy[i : i + bs]
            left_x, left_y = cx[full:], cy[full:]
        if left_y is not None and len(left_y) and emitted < len(self):
            yield left_x, left_y

    # ---- onto the device, float, transform, normalize --------------------------------------

    def _finish(self, xb: torch.Tensor, yb: torch.Tensor, tgen: torch.Generator | None) -> Batch:
        if xb.device != self.device:
            xb = self._to_device(xb)
            yb = yb.to(self.device, non_blocking=True)
        if self.memory_format is not None:
            xb = xb.contiguous(memory_format=self.memory_format)  # uint8: 4x cheaper than float
        scale, shift = self._norm
        if self.transform is None:
            # One fused pass: (x / 255 - mean) / std == x * scale + shift.
            return xb.to(torch.float32).mul_(scale).add_(shift), yb
        assert tgen is not None
        out = self.transform(xb.to(torch.float32).div_(255.0), tgen)
        return out * (scale * 255.0) + shift, yb

    def _to_device(self, xb: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return xb.to(self.device)
        # Two pinned staging buffers: fill one while the other's copy may still be in flight.
        if not self._pinned:
            shape = (self.batch_size, *xb.shape[1:])
            self._pinned = [torch.empty(shape, dtype=xb.dtype).pin_memory() for _ in range(2)]
        turn, self._turn = self._turn, 1 - self._turn
        event = self._events[turn]
        if event is not None:
            event.synchronize()
        buf = self._pinned[turn][: len(xb)]
        buf.copy_(xb)
        out = buf.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._events[turn] = done
        return out

    def _fits_on_device(self, resident: bool | Literal["auto"]) -> bool:
        if resident != "auto":
            return bool(resident)
        assert self.x is not None
        return self.x.nbytes < self._free_gpu() // 2

    def _free_gpu(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        return free

    def _normalization(
        self, mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(list(mean) if mean is not None else [0.0] * channels)
        s = torch.tensor(list(std) if std is not None else [1.0] * channels)
        if m.numel() not in (1, channels) or s.numel() not in (1, channels):
            raise ValueError(
                f"mean/std have {m.numel()}/{s.numel()} values for {channels} channels"
            )
        shape = (1, -1, 1, 1)
        scale = (1.0 / (255.0 * s)).float().view(shape).to(self.device)
        shift = (-m / s).float().view(shape).to(self.device)
        return scale, shift
