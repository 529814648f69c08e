"""Saving and loading weights as ``.npz``: one array per state-dict key, no pickle anywhere.

``save`` writes atomically (a temporary file in the same folder, flushed to
disk, then renamed over the target), so a crash mid-write leaves the old file
intact. ``load`` reads the archive itself, member by member: each array's
header is checked against the member's real size before any memory is set
aside for it, so a damaged or hostile file is a ``SerializationError`` naming
the file and the key, never a crash deep inside NumPy. ``convert_torch_checkpoint``
turns a PyTorch ``.pth`` into such a file, or writes nothing.
"""
import math
import os
import struct
import tempfile
import tokenize
import warnings
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .backend import to_numpy
from .tensor import Tensor


class SerializationError(ValueError):
    """A weights file cannot be loaded or converted: damaged, unsafe, or not a state dict of arrays.

    The message is whole and names the file, and the key when one is at fault.
    """


_RESERVED = ("file", "allow_pickle")  # np.savez's own argument names
_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex: what a state dict holds
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_INFLATE_MAX = 1032  # deflate's best ratio: no honest member inflates further
# what reading a damaged archive can raise, from zipfile, zlib, struct and NumPy's header parser
_DAMAGE = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError, ValueError, TypeError,
           OverflowError, MemoryError, RuntimeError, SyntaxError, tokenize.TokenError)


def _arrays(obj):
    """A Module, or a mapping of Tensors/arrays, as an ordered {name: host array}."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if not hasattr(obj, "items"):
        raise TypeError(f"save: expected a Module or a mapping of names to tensors, got {type(obj).__name__}")
    out = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not key or "\0" in key:
            raise TypeError(f"save: keys must be non-empty strings without NUL characters, got {key!r}")
        if key in _RESERVED:
            raise ValueError(f"save: {key!r} cannot be a key (np.savez takes it as an argument); rename it")
        data = value.data if isinstance(value, Tensor) else value
        try:
            array = np.asarray(to_numpy(data))  # a GPU array comes to the host first
        except (TypeError, ValueError) as exc:
            raise TypeError(f"save: {key!r} is not an array ({type(value).__name__}: {exc})") from None
        if array.dtype.kind not in _KINDS or array.dtype.fields is not None:
            raise TypeError(f"save: {key!r} is not a numeric array (dtype {array.dtype}); weights files "
                            "hold booleans, integers, floats and complex numbers only")
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


def write_atomic(path, write):
    """Write ``path`` whole or not at all: ``write(f)`` fills a temporary binary file beside it, which is
    flushed to disk and renamed over ``path`` (keeping an existing file's permissions).

    A crash leaves the old file as it was, plus at most a ``.tmp-<name>-*`` file that a run folder
    removes when it is opened again. Every file minires writes for a user goes through here.
    """
    folder = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save(obj, path):
    """Write a Module's state dict (or a mapping of tensors/arrays) to ``path`` as an .npz, atomically.

    The file is written exactly at ``path`` (no ".npz" is appended). Returns ``path``.
    """
    arrays = _arrays(obj)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save: cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: cannot write {path}: it is a folder")
    write_atomic(path, lambda f: np.savez(f, **arrays))  # object arrays were refused above: nothing pickled
    return path


# ---------------------------------------------------------------- reading


def _existing_file(path, op, what):
    """``path`` as a string if it names a regular file; else the error a user can act on."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{op}: {path} is a folder, not {what} file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{op}: no such file: {path}")
    if not os.path.isfile(path):
        raise SerializationError(f"{op}: {path} is not a regular file (a device or a pipe?), not {what} file")
    return path


def _is_zip(f):
    """True if the open file ``f`` ends like a zip archive (a damaged end record counts: ZipFile says how)."""
    try:
        return zipfile.is_zipfile(f)
    except zipfile.BadZipFile:
        return True


def _what_it_is(head, path):
    """A sentence for a file that is no zip archive at all, from its first bytes."""
    if not head:
        return f"load: {path} is empty, not an .npz archive of named arrays"
    if head.startswith(_NPY_MAGIC):
        return f"load: {path} holds a single .npy array, not an .npz archive of named arrays"
    if head[:1] == b"\x80":
        return (f"load: {path} is a Python pickle, not an .npz archive; minires never unpickles "
                "(unpickling can run any code)")
    return f"load: {path} is not an .npz archive (no zip structure found; truncated or another format?)"


def _check_member(info, path, archive_size):
    """The key of one zip member, or a SerializationError if it cannot be an array np.savez wrote."""
    name = info.filename
    if name.endswith("data.pkl"):
        raise SerializationError(f"load: {path} is a PyTorch checkpoint, not an .npz; turn it into one with "
                                 f"`minires convert {path} weights.npz`")
    if not name.endswith(".npy") or info.is_dir():
        raise SerializationError(f"load: {path}: member {name!r} is not an .npy array; "
                                 "an .npz holds nothing else")
    key = name[:-len(".npy")]
    where = f"load: {path}, key {key!r}:"
    if not key:
        raise SerializationError(f"{where} an empty key names no array")
    if info.flag_bits & 0x1:
        raise SerializationError(f"{where} the member is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise SerializationError(f"{where} compression method {info.compress_type} is not one np.savez writes "
                                 "(stored or deflated)")
    if info.header_offset + info.compress_size > archive_size:
        raise SerializationError(f"{where} the member claims {info.compress_size} bytes past offset "
                                 f"{info.header_offset}, but the file has {archive_size}; it is truncated")
    most = info.compress_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * _INFLATE_MAX
    if info.file_size > most:
        raise SerializationError(f"{where} the member claims {info.file_size} bytes but its "
                                 f"{info.compress_size} stored bytes cannot hold that many")
    return key


def _read_member(zf, info, key, path):
    """The array in one member, its header checked against the member's size before anything is allocated."""
    where = f"load: {path}, key {key!r}:"
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_READERS:
            raise SerializationError(f"{where} .npy format version {version[0]}.{version[1]} is not supported "
                                     "(minires reads versions 1.0 and 2.0)")
        shape, fortran, dtype = _HEADER_READERS[version](f)
        if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise SerializationError(f"{where} dtype {dtype} is not a numeric array; minires loads booleans, "
                                     "integers, floats and complex numbers only, and never unpickles objects")
        if any(d < 0 for d in shape):
            raise SerializationError(f"{where} the header gives a negative size in shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - f.tell()
        if nbytes != held:
            raise SerializationError(f"{where} the header says shape {shape} of {dtype} ({nbytes} bytes), "
                                     f"but the member holds {held} bytes of data")
        buffer = bytearray(nbytes)
        view, got = memoryview(buffer), 0
        while got < nbytes:
            chunk = f.read(min(nbytes - got, 1 << 24))
            if not chunk:
                raise SerializationError(f"{where} the data ends after {got} of {nbytes} bytes; the file is "
                                         "truncated")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        f.read()  # reaching the member's end checks its CRC
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def load(path):
    """The {name: array} mapping saved by ``save`` (or any plain .npz of numeric arrays), in file order.

    Nothing is unpickled. A missing path is a FileNotFoundError; anything else
    wrong with the file is a ``SerializationError`` naming the file and the key.
    """
    path = _existing_file(path, "load", "an .npz")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        f.seek(0)
        if not _is_zip(f):
            raise SerializationError(_what_it_is(head, path))
        f.seek(0)
        key = None
        try:
            with zipfile.ZipFile(f) as zf:
                members, keys = zf.infolist(), {}
                for info in members:
                    key = _check_member(info, path, size)
                    if key in keys:
                        raise SerializationError(f"load: {path}: key {key!r} appears twice; which one is "
                                                 "meant cannot be told")
                    keys[key] = info
                out = OrderedDict()
                for key, info in keys.items():
                    out[key] = _read_member(zf, info, key, path)
                return out
        except SerializationError:
            raise
        except _DAMAGE as exc:
            where = f"load: {path}" + (f", key {key!r}" if key is not None else "")
            raise SerializationError(f"{where}: the .npz is damaged or truncated ({type(exc).__name__}: "
                                     f"{_first_line(exc)})") from None


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


# ---------------------------------------------------------------- PyTorch checkpoints


def _holds_tensor(value, torch, depth=0):
    """True if ``value`` is, or contains within a few levels of dicts, lists and tuples, a tensor."""
    if isinstance(value, torch.Tensor):
        return True
    if depth > 4:
        return False
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(_holds_tensor(v, torch, depth + 1) for v in value)


def _tensor_to_numpy(value, torch, where):
    """A dense CPU tensor as a NumPy array (bfloat16 widened exactly to float32); refuses what NumPy cannot hold."""
    if value.layout != torch.strided:
        raise SerializationError(f"{where} is a sparse tensor (layout {value.layout}); only dense tensors "
                                 "convert: save tensor.to_dense() instead")
    if value.is_quantized:
        raise SerializationError(f"{where} is a quantized tensor ({value.dtype}); only plain tensors convert: "
                                 "save tensor.dequantize() instead")
    if value.device.type == "meta":
        raise SerializationError(f"{where} is a meta tensor: it has a shape but no values to convert")
    value = value.detach().cpu().resolve_conj().resolve_neg()
    if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds every value exactly
        value = value.float()
    try:
        return value.numpy()
    except (TypeError, RuntimeError):
        raise SerializationError(f"{where} has dtype {value.dtype}, which NumPy cannot hold; cast it "
                                 "(e.g. tensor.float()) before saving") from None


def _torch_load(torch, source):
    """``torch.load(weights_only=True)`` on the CPU, any failure a SerializationError naming the file."""
    try:
        with warnings.catch_warnings():  # torch's own deprecation notes are nothing the user can act on
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... depending on the damage
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line),
                      lines[0] if lines else "no details")
        raise SerializationError(f"convert: {source} cannot be read by torch.load(weights_only=True): it is "
                                 "damaged, not a PyTorch file, or holds objects other than tensors and plain "
                                 f"containers ({type(exc).__name__}: {detail})") from None


def _check_zip(source):
    """Read every member of a zip-format .pth once, so its CRCs are checked: ``torch.load`` checks none."""
    with open(source, "rb") as f:
        if not _is_zip(f):
            return  # the legacy format, or no archive at all: torch.load judges it
        f.seek(0)
        name = None
        try:
            with zipfile.ZipFile(f) as zf:
                for info in zf.infolist():
                    name = info.filename
                    with zf.open(info) as member:
                        while member.read(1 << 20):
                            pass
        except (*_DAMAGE, NotImplementedError) as exc:
            where = f", member {name!r}" if name else ""
            raise SerializationError(f"convert: {source}{where}: the checkpoint is damaged or truncated "
                                     f"({type(exc).__name__}: {_first_line(exc)})") from None


def convert_torch_checkpoint(source, target):
    """Turn a PyTorch ``.pth`` state dict (or a checkpoint holding one) into an .npz; returns the array count.

    Reads with ``torch.load(weights_only=True)``; a ``"state_dict"`` or
    ``"model"`` entry is unwrapped and a DataParallel ``"module."`` prefix
    dropped. Plain values beside the tensors (an epoch count) are skipped;
    bfloat16 is widened to float32. Anything else that cannot be kept as it is
    (a damaged file, a key that is no name, two keys that become one, a
    sparse, quantized or meta tensor, tensors nested in a container) is a
    ``SerializationError`` naming the file and the key, and nothing is written.
    A zip-format file's checksums are verified; the legacy (pre-1.6) format
    has none, so damage to its tensor bytes cannot be seen.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError("convert needs PyTorch to read .pth files (pip install torch); "
                           "minires itself does not") from None
    source, target = _existing_file(source, "convert", "a .pth"), os.fspath(target)
    if os.path.abspath(source) == os.path.abspath(target) or (
            os.path.exists(target) and os.path.samefile(source, target)):
        raise ValueError(f"convert: the target {target} is the source file; writing it would destroy the .pth")
    _check_zip(source)
    state = _torch_load(torch, source)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise SerializationError(f"convert: {source} does not hold a state dict (got {type(state).__name__})")
    arrays, origin = OrderedDict(), {}
    for key, value in state.items():
        where = f"convert: {source}, key {key!r}"
        if not isinstance(key, str) or not key:
            kind = "empty" if key == "" else f"a {type(key).__name__}"
            raise SerializationError(f"{where}: state-dict keys are parameter names such as 'fc.weight'; "
                                     f"this one is {kind}")
        if not isinstance(value, torch.Tensor):
            if _holds_tensor(value, torch):
                raise SerializationError(f"{where} holds a {type(value).__name__} of tensors, not one tensor; "
                                         "convert the state dict inside it on its own")
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        if not name or "\0" in name:
            raise SerializationError(f"{where}: {name!r} is no parameter name once the DataParallel prefix "
                                     "'module.' is dropped")
        if name in origin:
            raise SerializationError(f"convert: {source}: keys {origin[name]!r} and {key!r} would both be saved "
                                     f"as {name!r} once the DataParallel prefix 'module.' is dropped; remove "
                                     "one of them")
        if name in _RESERVED:
            raise SerializationError(f"{where}: {name!r} cannot be a key of an .npz (np.savez takes it as an "
                                     "argument); rename it")
        arrays[name] = _tensor_to_numpy(value, torch, where)
        origin[name] = key
    if not arrays:
        keys = ", ".join(repr(k) for k in list(state)[:8]) or "none"
        raise SerializationError(f"convert: {source} holds no tensors (its keys: {keys})")
    save(arrays, target)
    return len(arrays)
