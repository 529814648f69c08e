"""Readers for the on-disk formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary records, and tar archives.

Every reader checks what it reads against what the format promises (magic
numbers, sizes, label ranges) and says which file is wrong and how. Nothing
here unpickles anything.
"""
import gzip
import lzma
import math
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib

import numpy as np

from .download import owner_tag, remove_stale


class DataFormatError(ValueError):
    """A data file is not what its format says it should be (bad magic, wrong size, unsafe archive)."""


# IDX type codes (the third header byte) -> big-endian dtypes
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)


def read_bytes(path):
    """The contents of ``path``, gunzipped when it is a gzip file; a damaged gzip stream is a DataFormatError."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFormatError(f"{path}: damaged gzip file ({exc}); delete it and download it again") from None


def parse_idx(raw, name="<bytes>", expected_magic=None):
    """The array stored in IDX bytes: 4-byte magic (0, 0, type, ndim), ndim big-endian uint32 sizes, then data."""
    if len(raw) < 4:
        raise DataFormatError(f"{name}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(f"{name}: IDX magic number is 0x{magic:08X}, expected 0x{expected_magic:08X}")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES:
        raise DataFormatError(f"{name}: not an IDX file (magic number 0x{magic:08X})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                              f"file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a crafted header cannot overflow them
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise DataFormatError(f"{name}: {what}: header says shape {shape} ({expected} data bytes), "
                              f"file has {len(raw) - header} data bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path, expected_magic=None):
    """The array in the IDX file at ``path`` (plain or .gz), validated against its header."""
    return parse_idx(read_bytes(path), name=os.fspath(path), expected_magic=expected_magic)


def read_idx_pair(images_path, labels_path, num_classes=10):
    """(uint8 images (N, rows, cols), int64 labels (N,)) from an IDX images file and its labels file."""
    images = read_idx(images_path, expected_magic=IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                              f"{len(labels)} labels")
    _check_labels(labels, num_classes, labels_path)
    return images, labels


CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes, row-major


def parse_cifar10(raw, name="<bytes>", num_classes=10):
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) from CIFAR-10 binary records."""
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise DataFormatError(f"{name}: {len(raw)} bytes is not a whole number of CIFAR-10 records "
                              f"({CIFAR10_RECORD} bytes each); the file is truncated or not CIFAR-10 binary")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, num_classes, name)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar10(path, num_classes=10):
    """(images, labels) from one CIFAR-10 binary batch file such as ``data_batch_1.bin``."""
    return parse_cifar10(read_bytes(path), name=os.fspath(path), num_classes=num_classes)


def _check_labels(labels, num_classes, name):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(f"{name}: labels must lie in 0..{num_classes - 1}, found "
                              f"{labels.min()}..{labels.max()}")


def _check_member(member, archive):
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or (parts and ":" in parts[0]):
        raise DataFormatError(f"{archive}: refusing to extract unsafe member {name!r} "
                              "(absolute path or '..'); the archive is not the expected one")
    if not (member.isfile() or member.isdir()):
        raise DataFormatError(f"{archive}: refusing to extract {name!r}: only regular files and folders "
                              "are allowed, not links or devices")


def _member_paths(members, archive):
    """{member: its normalised relative path}, refusing nameless files, duplicates and file/folder clashes."""
    paths, files, folders = {}, set(), set()
    for member in members:
        _check_member(member, archive)
        path = posixpath.normpath(member.name.replace("\\", "/"))
        if member.isdir():
            folders.add(path)
            continue
        if path in (".", ""):
            raise DataFormatError(f"{archive}: member {member.name!r} is a file without a name; "
                                  "the archive is damaged")
        if path in files:
            raise DataFormatError(f"{archive}: member {member.name!r} appears twice; which copy is meant "
                                  "cannot be told, so the archive is not the expected one")
        files.add(path)
        paths[member] = path
        parent = posixpath.dirname(path)
        while parent:
            folders.add(parent)
            parent = posixpath.dirname(parent)
    clash = sorted(files & folders)
    if clash:
        raise DataFormatError(f"{archive}: member {clash[0]!r} is both a file and a folder; "
                              "the archive is damaged")
    return paths


def _check_end(tar, archive):
    """Read past the last member: only the zero blocks that end a tar may follow (and a gzip CRC is checked).

    tarfile stops quietly at a damaged member header or a cut-off archive as if
    the archive had ended there; this is where such damage shows.
    """
    tar.fileobj.seek(tar.offset)
    rest = 0
    for chunk in iter(lambda: tar.fileobj.read(1 << 20), b""):
        if chunk.count(0) != len(chunk):
            raise DataFormatError(f"{archive}: damaged tar archive: data follows the end of the archive at byte "
                                  f"{tar.offset} (a damaged member header?); delete it and download it again")
        rest += len(chunk)
    if rest < tarfile.BLOCKSIZE:
        raise DataFormatError(f"{archive}: truncated tar archive: it stops at byte {tar.offset} without the "
                              "end-of-archive marker; delete it and download it again")


def safe_extract(archive, dest):
    """Extract the tar archive into ``dest``: regular files and folders only, no absolute or '..' paths.

    Every member is checked before anything is written, and the files land in a
    temporary folder that is moved into place only when all of them were read
    and the archive proved whole. Staging folders a crashed extraction left
    behind are removed first. Returns the relative paths extracted.
    """
    os.makedirs(dest, exist_ok=True)
    remove_stale(dest, ".extract-", "")
    try:
        with tarfile.open(archive, "r:*") as tar:
            paths = _member_paths(tar.getmembers(), archive)
            staging = tempfile.mkdtemp(prefix=f".extract-{owner_tag()}.", dir=dest)
            try:
                written = []
                for member, rel in paths.items():
                    target = os.path.join(staging, *rel.split("/"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    written.append(rel)
                _check_end(tar, archive)
                for rel in written:
                    final = os.path.join(dest, *rel.split("/"))
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.replace(os.path.join(staging, *rel.split("/")), final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        detail = " ".join(str(exc).split())  # tarfile lists each method it tried on a line of its own
        raise DataFormatError(f"{archive}: damaged tar archive ({detail}); delete it and download it again") from None
    return written
