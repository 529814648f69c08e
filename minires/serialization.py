"""Saving and loading weights as ``.npz``: one array per state-dict key, no pickle anywhere.

``save`` writes atomically (a temporary file in the same folder, flushed to
disk, then renamed over the target), so a crash mid-write leaves the old file
intact. ``load`` refuses anything that is not a plain ``.npz`` of arrays.
"""
import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np

from .backend import to_numpy
from .tensor import Tensor


def _arrays(obj):
    """A Module, or a mapping of Tensors/arrays, as an ordered {name: host array}."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    out = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"save: keys must be strings, got {key!r}")
        data = value.data if isinstance(value, Tensor) else value
        array = to_numpy(data) if not isinstance(data, np.ndarray) else data
        array = np.asarray(array)
        if array.dtype == object:
            raise TypeError(f"save: {key!r} is not a numeric array (dtype object)")
        out[key] = array
    return out


def save(obj, path):
    """Write a Module's state dict (or a mapping of tensors/arrays) to ``path`` as an .npz, atomically."""
    arrays = _arrays(obj)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load(path):
    """The {name: array} mapping saved by ``save`` (or any plain .npz), read without pickle."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return OrderedDict((k, npz[k]) for k in npz.files)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path} is not a readable .npz of arrays (corrupted, truncated, or pickled?): "
                         f"{exc}") from None
    except AttributeError:  # np.load returned a plain array
        raise ValueError(f"{path} is not a readable .npz of arrays") from None


def convert_torch_checkpoint(source, target):
    """Turn a PyTorch ``.pth`` state dict (or a checkpoint holding one) into an .npz; returns the count."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("minires convert needs PyTorch to read .pth files: pip install torch") from None
    if not os.path.exists(source):
        raise FileNotFoundError(f"no such file: {source}")
    state = torch.load(source, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{source} does not hold a state dict (got {type(state).__name__})")
    arrays = OrderedDict()
    for key, value in state.items():
        if not hasattr(value, "detach"):
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        arrays[name] = value.detach().cpu().numpy()
    if not arrays:
        raise ValueError(f"{source} holds no tensors")
    save(arrays, target)
    return len(arrays)
