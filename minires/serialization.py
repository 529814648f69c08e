"""Saving and loading weights as ``.npz``: one array per state-dict key, no pickle anywhere.

``save`` writes atomically (a temporary file in the same folder, flushed to
disk, then renamed over the target), so a crash mid-write leaves the old file
intact. ``load`` refuses anything that is not a plain ``.npz`` of arrays.
``convert_torch_checkpoint`` turns a PyTorch ``.pth`` into such a file.
"""
import os
import tempfile
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .backend import to_numpy
from .tensor import Tensor


_RESERVED = ("file", "allow_pickle")  # np.savez's own argument names


def _arrays(obj):
    """A Module, or a mapping of Tensors/arrays, as an ordered {name: host array}."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if not hasattr(obj, "items"):
        raise TypeError(f"save: expected a Module or a mapping of names to tensors, got {type(obj).__name__}")
    out = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"save: keys must be non-empty strings, got {key!r}")
        data = value.data if isinstance(value, Tensor) else value
        array = np.asarray(to_numpy(data))  # a GPU array comes to the host first
        if array.dtype.hasobject:
            raise TypeError(f"save: {key!r} is not a numeric array (dtype {array.dtype})")
        if key in _RESERVED:
            raise ValueError(f"save: {key!r} cannot be a key (np.savez takes it as an argument); rename it")
        out[key] = array
    return out


def _new_file_mode(path):
    """The permissions the target should get: an existing file's, else 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save(obj, path):
    """Write a Module's state dict (or a mapping of tensors/arrays) to ``path`` as an .npz, atomically.

    The file is written exactly at ``path`` (no ".npz" is appended). Returns ``path``.
    """
    arrays = _arrays(obj)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save: cannot write {path}: the folder {folder} does not exist")
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # object arrays were refused above, so nothing is pickled
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not every platform can open a folder
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def load(path):
    """The {name: array} mapping saved by ``save`` (or any plain .npz), in file order, read without pickle."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file: {path}")
    problem = None
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        problem = exc
    else:
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"load: {path} holds a single .npy array, not an .npz archive of named arrays")
        try:
            with npz:
                return OrderedDict((name, npz[name]) for name in npz.files)
        except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError) as exc:
            problem = exc
    raise ValueError(f"load: {path} is not a valid .npz of arrays (corrupted, truncated, or pickled?): "
                     f"{type(problem).__name__}: {problem}") from None


def convert_torch_checkpoint(source, target):
    """Turn a PyTorch ``.pth`` state dict (or a checkpoint holding one) into an .npz; returns the array count.

    Reads with ``torch.load(weights_only=True)``; a ``"state_dict"`` or
    ``"model"`` entry is unwrapped and a DataParallel ``"module."`` prefix dropped.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError("convert needs PyTorch to read .pth files (pip install torch); "
                           "minires itself does not") from None
    source, target = os.fspath(source), os.fspath(target)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"convert: no such file: {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... depending on the damage
        raise ValueError(f"convert: {source} is not a PyTorch checkpoint readable with weights_only=True: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"convert: {source} does not hold a state dict (got {type(state).__name__})")
    arrays = OrderedDict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16
            value = value.float()
        arrays[name] = value.numpy()
    if not arrays:
        raise ValueError(f"convert: {source} holds no tensors")
    save(arrays, target)
    return len(arrays)
