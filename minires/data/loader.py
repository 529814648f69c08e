"""DataLoader: batches of (images, labels) tensors, shuffled by its own seeded generator."""
import copy
import math
import numbers

import numpy as np

from .. import rng as _rng
from ..backend import cupy_or_none, normalize_device
from ..tensor import Tensor


class DataLoader:
    """Iterate over ``dataset`` in batches of (Tensor images float32 NCHW, Tensor labels int64).

    With ``shuffle`` each epoch takes a fresh permutation from the loader's own
    generator (``numpy.random.default_rng(seed)``, or seeded from
    ``minires.rng.generator()`` when ``seed`` is None), and the dataset's batch
    transform draws from the same generator, so a seed fixes every batch.
    ``state_dict()`` / ``load_state_dict()`` carry the generator and epoch
    count through a checkpoint. ``drop_last`` leaves out a last batch smaller
    than ``batch_size``, as in PyTorch (``len()`` then counts full batches
    only): batch norm cannot train on one image whose features are 1x1.
    ``device="cuda"`` moves every batch to the GPU as it is made (the dataset
    itself stays in host memory). ``sampler``: an iterable of dataset indices
    that sets the order instead (e.g. a ``DistributedSampler``: this rank's share).

    ``shard=(rank, world)``: data parallelism that keeps one process's batches.
    Every rank draws the same order and makes, random transform included, the
    same whole (global) batch that one process would, then keeps its part:
    rows ``n * rank // world`` to ``n * (rank + 1) // world`` of a batch of n
    (equal parts when ``world`` divides n, within one image otherwise; a part
    can be empty). The ranks' parts together are exactly one process's batch,
    ``len()`` counts the global batches, and the generator stays the same on
    every rank, so a state saved with one world size resumes with another.
    ``dtype``: the images' float type (float32; float64 for exact comparisons).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None, device="cpu",
                 sampler=None, shard=None, dtype=np.float32):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)):  # as PyTorch: "yes" or 0 is a mistake, not a flag
                raise ValueError(f"DataLoader: {name} must be True or False, got {value!r}")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader: expected a dataset with __len__ and __getitem__, got "
                            f"{type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError("DataLoader: the dataset is empty")
        if sampler is not None and (shuffle or not hasattr(sampler, "__iter__") or not hasattr(sampler, "__len__")):
            raise ValueError("DataLoader: sampler must be an iterable of indices with a length, and excludes "
                             f"shuffle=True (the sampler sets the order), got sampler={sampler!r}, shuffle={shuffle}")
        self.sampler = sampler
        self.shard = _check_shard(shard)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"DataLoader: dtype must be a float type such as float32, got {self.dtype}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.device = normalize_device(device)
        if self.device == "cuda" and cupy_or_none() is None:
            raise RuntimeError("DataLoader: device='cuda' needs CuPy and a GPU (pip install 'minires[cuda]' "
                               "on a machine with an NVIDIA GPU); use device='cpu'")
        if seed is None:
            seed = int(_rng.generator().integers(2 ** 63))
        try:
            self.generator = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"DataLoader: seed must be None, an int >= 0 or a sequence of them, got {seed!r} "
                             f"({exc})") from None
        self.seed = seed
        self.epoch = 0          # epochs finished
        self._epoch_start = None  # (epoch, generator state) while an epoch is under way

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _fetch(self, indices):
        if hasattr(self.dataset, "batch"):
            images, labels = self.dataset.batch(indices)
            transform = getattr(self.dataset, "transform", None)
            if transform is not None:
                images = transform(images, self.generator)
        else:  # a generic dataset: one __getitem__ per item, its own transforms included
            items = [self.dataset[int(i)] for i in indices]
            images = np.stack([np.asarray(image) for image, _ in items])
            labels = np.array([label for _, label in items])
        if self.shard is not None:  # the whole batch was made (its random draws too); keep this rank's rows
            rank, world = self.shard
            n = len(indices)
            images, labels = images[n * rank // world:n * (rank + 1) // world], \
                labels[n * rank // world:n * (rank + 1) // world]
        return (Tensor(np.ascontiguousarray(images, dtype=self.dtype)).to(self.device),
                Tensor(np.asarray(labels, dtype=np.int64)).to(self.device))

    def __iter__(self):
        self._epoch_start = (self.epoch, copy.deepcopy(self.generator.bit_generator.state))
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
            n = len(order)
        else:
            n = len(self.dataset)
            order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self._fetch(order[start:start + self.batch_size])
        self.epoch += 1
        self._epoch_start = None

    def state_dict(self):
        """{"epoch", "bit_generator"}: JSON-friendly; taken mid-epoch it describes the start of that epoch."""
        if self._epoch_start is not None:
            epoch, state = self._epoch_start
        else:
            epoch, state = self.epoch, self.generator.bit_generator.state
        return {"epoch": epoch, "bit_generator": copy.deepcopy(state)}

    def load_state_dict(self, state):
        """Continue from ``state_dict()``'s output: the next epoch sees the batches it would have seen."""
        try:
            epoch, gen_state = int(state["epoch"]), state["bit_generator"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"DataLoader.load_state_dict: expected {{'epoch': int, 'bit_generator': dict}}, "
                             f"got {state!r:.200}") from None
        name = type(self.generator.bit_generator).__name__
        if not isinstance(gen_state, dict) or gen_state.get("bit_generator") != name:
            raise ValueError(f"DataLoader.load_state_dict: the saved generator state is not a {name} state")
        try:  # on a spare generator first: a damaged state must not leave this one half set
            type(self.generator.bit_generator)().state = gen_state
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"DataLoader.load_state_dict: the saved {name} state is damaged ({exc})") from None
        self.generator.bit_generator.state = copy.deepcopy(gen_state)
        self.epoch, self._epoch_start = epoch, None

    def __repr__(self):
        shard = "" if self.shard is None else f", shard={self.shard}"
        return (f"DataLoader({len(self.dataset)} items, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed}{shard})")


def _check_shard(shard):
    """``shard`` as (rank, world) of ints with 0 <= rank < world, or None."""
    if shard is None:
        return None
    try:
        rank, world = shard
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (rank, world))
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= rank < world:
        raise ValueError(f"DataLoader: shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    return int(rank), int(world)
