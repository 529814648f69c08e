"""Bad files in, clear errors out: load, save and convert, the data readers, downloads and the grader's manifest.

Every case asserts the error's type, that its message names the culprit (the
file, and the key or member when one is at fault), and that nothing in the
folder changed. Crafted headers stand in for huge files: a header that claims
a terabyte must be refused before anything is allocated, so these tests stay
fast. Hypothesis corrupts valid files at random: each corruption is either
refused with a clear error or reads back exactly what was written.
"""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minires import serialization
from minires.course import manifest
from minires.data import DataFormatError, DownloadError, formats, get_dataset
from minires.data import download as dl
from minires.serialization import SerializationError

from test_download import cifar_tar_bytes, idx_bytes, mnist_files, serve_mnist
from test_download import server  # noqa: F401  (the loopback server fixture, shared)


def snapshot(folder):
    """Every file (with its bytes) and folder under ``folder``: compare before and after to see that nothing changed."""
    files, folders = {}, set()
    for d, ds, fs in os.walk(folder):
        folders.update(os.path.relpath(os.path.join(d, x), folder) for x in ds)
        for f in fs:
            path = os.path.join(d, f)
            if not os.path.isfile(path):  # a pipe: opening it would wait for a writer
                files[os.path.relpath(path, folder)] = os.stat(path).st_mode
                continue
            with open(path, "rb") as fh:
                files[os.path.relpath(path, folder)] = fh.read()
    return files, folders


def refused(call, error, folder, *names):
    """Run ``call``; assert it raises ``error`` naming each of ``names`` and leaves ``folder`` as it was."""
    before = snapshot(folder)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for name in names:
        assert str(name) in message, f"{name!r} not named in: {message}"
    assert "\n" not in message.strip() or error is DownloadError, message  # one paragraph
    assert snapshot(folder) == before, "the folder changed"
    return message


# ---------------------------------------------------------------- load: crafted archives


def npy(shape, descr="<f8", data=None, fortran=False):
    """An .npy member with any header: the data need not match it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    if data is None:
        data = np.zeros(shape, np.dtype(descr)).tobytes()
    return buffer.getvalue() + data


def npz(path, members, method=zipfile.ZIP_STORED):
    """Write an .npz of (member name, bytes) pairs by hand, duplicates and all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names, which is the point
        with zipfile.ZipFile(path, "w", method) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def lie_about_size(path, size):
    """Patch the uncompressed size of the archive's first member in its local and central headers."""
    data = bytearray(open(path, "rb").read())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 22:local + 26] = struct.pack("<I", size)
    data[central + 24:central + 28] = struct.pack("<I", size)
    open(path, "wb").write(bytes(data))
    return path


class _Payload:
    """Pickles to a call of os.mkdir: loading it with pickle allowed would create a folder."""

    def __init__(self, folder):
        self.folder = folder

    def __reduce__(self):
        return os.mkdir, (self.folder,)


def _object_member(tmp_path):
    return npy((1,), "|O", pickle.dumps(np.array([_Payload(str(tmp_path / "unpickled"))], dtype=object)))


BAD_NPZ = {  # name: (members or a builder, method, what the message must say, the key at fault)
    "huge shape": ([("w.npy", npy((2 ** 40,), data=b"\0" * 8))], zipfile.ZIP_STORED,
                   "header says shape (1099511627776,)", "w"),
    "huge shape, deflated": ([("w.npy", npy((1 << 20, 1 << 20), "<f4", data=b"\0" * 64))], zipfile.ZIP_DEFLATED,
                             "header says shape (1048576, 1048576)", "w"),
    "data longer than the header says": ([("w.npy", npy((2,), data=b"\0" * 24))], zipfile.ZIP_STORED,
                                         "holds 24 bytes", "w"),
    "negative size": ([("w.npy", npy((-1, 4), data=b""))], zipfile.ZIP_STORED, "negative", "w"),
    "objects": (_object_member, zipfile.ZIP_STORED, "never unpickles", "w"),
    "strings": ([("w.npy", npy((2,), "<U3"))], zipfile.ZIP_STORED, "not a numeric array", "w"),
    "records": ([("w.npy", npy((2,), [("a", "<f4"), ("b", "<i4")]))], zipfile.ZIP_STORED, "not a numeric", "w"),
    "subarray": ([("w.npy", npy((2,), ("<f4", (3,))))], zipfile.ZIP_STORED, "not a numeric", "w"),
    "datetimes": ([("w.npy", npy((2,), "<M8[s]"))], zipfile.ZIP_STORED, "not a numeric", "w"),
    "duplicate key": ([("w.npy", npy((2,))), ("b.npy", npy((1,))), ("w.npy", npy((3,)))], zipfile.ZIP_STORED,
                      "appears twice", "w"),
    "empty key": ([(".npy", npy((2,)))], zipfile.ZIP_STORED, "empty key", ""),
    "not an array": ([("w.npy", npy((2,))), ("notes.txt", b"hello")], zipfile.ZIP_STORED,
                     "is not an .npy array", "notes.txt"),
    "folder member": ([("w.npy", npy((2,))), ("sub/", b"")], zipfile.ZIP_STORED, "is not an .npy array", "sub/"),
    "bad npy magic": ([("w.npy", b"NOTNUMPY" + b"\0" * 64)], zipfile.ZIP_STORED, "damaged", "w"),
    "npy version 3": ([("w.npy", b"\x93NUMPY\x03\x00" + npy((2,))[8:])], zipfile.ZIP_STORED, "version 3.0", "w"),
    "garbage header": ([("w.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4, 'sh\n")], zipfile.ZIP_STORED,
                       "damaged", "w"),
    "pytorch checkpoint": ([("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/version", b"3\n")],
                           zipfile.ZIP_STORED, "minires convert", None),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_load_refuses_crafted_archives(tmp_path, case):
    members, method, says, key = BAD_NPZ[case]
    if callable(members):
        members = [("w.npy", members(tmp_path))]
    path = npz(tmp_path / "bad.npz", members, method)
    message = refused(lambda: serialization.load(path), SerializationError, tmp_path, path, says)
    if key is not None:
        assert f"key {key!r}" in message or f"member {key!r}" in message, message
    assert not (tmp_path / "unpickled").exists()  # nothing was unpickled


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_that_claims_more_bytes_than_it_stores_is_refused_before_reading(tmp_path, method):
    path = lie_about_size(npz(tmp_path / "w.npz", [("w.npy", npy((2 ** 27,), data=b"\0" * 16))], method), 2 ** 30)
    refused(lambda: serialization.load(path), SerializationError, tmp_path, path, "'w'", "claims 1073741824 bytes")


def test_load_refuses_encrypted_and_unusually_compressed_members(tmp_path):
    path = npz(tmp_path / "bz.npz", [("w.npy", npy((4,)))], zipfile.ZIP_BZIP2)
    refused(lambda: serialization.load(path), SerializationError, tmp_path, path, "'w'", "compression method 12")
    data = bytearray(npz(tmp_path / "enc.npz", [("w.npy", npy((4,)))]).read_bytes())
    for signature, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" bit in both headers
        at = data.index(signature) + flags
        data[at] |= 1
    (tmp_path / "enc.npz").write_bytes(bytes(data))
    refused(lambda: serialization.load(tmp_path / "enc.npz"), SerializationError, tmp_path, "enc.npz", "encrypted")


def test_load_names_what_a_non_archive_is(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"a": _Payload(str(tmp_path / "unpickled"))}))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_bytes(b"weights, honest" * 10)
    for name, says in (("one.npy", "single .npy array"), ("pickled.npz", "never unpickles"), ("empty.npz", "empty"),
                       ("text.npz", "not an .npz archive")):
        refused(lambda: serialization.load(tmp_path / name), SerializationError, tmp_path, tmp_path / name, says)
    assert not (tmp_path / "unpickled").exists()
    refused(lambda: serialization.load(tmp_path), IsADirectoryError, tmp_path, tmp_path, "folder")
    assert issubclass(SerializationError, ValueError)


def test_big_endian_and_fortran_arrays_load_as_their_values(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    b = np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3))
    np.savez(tmp_path / "w.npz", a=a, b=b)
    loaded = serialization.load(tmp_path / "w.npz")
    assert loaded["a"].dtype == np.float32 and loaded["a"].dtype.isnative
    np.testing.assert_array_equal(loaded["a"], a)
    np.testing.assert_array_equal(loaded["b"], b)
    loaded["a"][0, 0] = 7  # writable, like np.load's arrays


def _valid_npz(compressed):
    buffer = io.BytesIO()
    arrays = {"conv.weight": np.arange(96, dtype=np.float32).reshape(2, 3, 4, 4), "bn.num_batches_tracked":
              np.array(5, np.int64), "fc.bias": np.linspace(-1, 1, 10)}
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue(), arrays


def _corrupt(data, edits, cut):
    out = bytearray(data)
    for at, value in edits:
        out[at % len(out)] = value
    return bytes(out[:max(0, len(out) - cut)])


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4)


@given(compressed=st.booleans(), edits=edits, cut=st.one_of(st.just(0), st.integers(1, 4000)))
def test_load_of_a_randomly_corrupted_archive_refuses_or_reads_exactly(compressed, edits, cut):
    good, arrays = _valid_npz(compressed)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "w.npz")
        with open(path, "wb") as f:
            f.write(_corrupt(good, edits, cut))
        before = snapshot(folder)
        try:
            loaded = serialization.load(path)
        except SerializationError as exc:
            assert path in str(exc)
        else:  # the damage hit bytes nobody reads (a timestamp, a comment): the values must be exact
            assert list(loaded) == list(arrays)
            for key, value in arrays.items():
                assert loaded[key].dtype == value.dtype and loaded[key].tobytes() == value.tobytes(), key
        assert snapshot(folder) == before


# ---------------------------------------------------------------- save: bad input writes nothing


@pytest.mark.parametrize("state, error, says", [
    ({"a\0b": np.zeros(2)}, TypeError, "NUL"),
    ({3: np.zeros(2)}, TypeError, "non-empty strings"),
    ({"": np.zeros(2)}, TypeError, "non-empty strings"),
    ({"w": np.array(["a", "b"])}, TypeError, "'w' is not a numeric array"),
    ({"w": np.zeros(2, [("a", "<f4")])}, TypeError, "'w' is not a numeric array"),
    ({"w": [[1, 2], [3]]}, TypeError, "'w' is not an array"),
    ({"allow_pickle": np.zeros(1)}, ValueError, "'allow_pickle' cannot be a key"),
], ids=["NUL in key", "int key", "empty key", "strings", "records", "ragged", "reserved"])
def test_save_refuses_what_load_could_not_read_back(tmp_path, state, error, says):
    serialization.save({"old": np.ones(3)}, tmp_path / "w.npz")
    refused(lambda: serialization.save(state, tmp_path / "w.npz"), error, tmp_path, says)


def test_save_onto_a_folder_says_so(tmp_path):
    (tmp_path / "w.npz").mkdir()
    refused(lambda: serialization.save({"a": np.zeros(1)}, tmp_path / "w.npz"), IsADirectoryError, tmp_path,
            tmp_path / "w.npz", "folder")


# ---------------------------------------------------------------- convert: bad PyTorch checkpoints


def _convert_refuses(tmp_path, torch, state, *names):
    torch.save(state, tmp_path / "in.pth")
    return refused(lambda: serialization.convert_torch_checkpoint(tmp_path / "in.pth", tmp_path / "out.npz"),
                   SerializationError, tmp_path, tmp_path / "in.pth", *names)


@pytest.mark.parametrize("key, says", [(0, "this one is a int"), ("", "this one is empty"),
                                       (("fc", 1), "this one is a tuple"), ("module.", "is no parameter name")],
                         ids=["int", "empty", "tuple", "bare prefix"])
def test_convert_refuses_keys_that_are_no_names(tmp_path, torch, key, says):
    _convert_refuses(tmp_path, torch, {"fc.weight": torch.ones(2), key: torch.zeros(2)}, repr(key), says)


@pytest.mark.parametrize("first, second", [("module.fc.weight", "fc.weight"), ("fc.weight", "module.fc.weight")])
def test_convert_refuses_keys_that_collide_once_the_prefix_is_dropped(tmp_path, torch, first, second):
    state = {"conv.weight": torch.ones(1), first: torch.zeros(2), second: torch.ones(2)}
    _convert_refuses(tmp_path, torch, state, repr(first), repr(second), "'fc.weight'")


def _odd_tensors(torch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "sparse": (torch.eye(3).to_sparse(), "sparse"),
            "sparse_csr": (torch.eye(3).to_sparse_csr(), "sparse"),
            "quantized": (torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "quantized"),
            "meta": (torch.empty(3, device="meta"), "meta tensor"),
            "complex_half": (torch.zeros(3, dtype=torch.complex32), "NumPy cannot hold"),
            "float8": (torch.zeros(3, dtype=torch.float8_e4m3fn), "NumPy cannot hold"),
        }


@pytest.mark.parametrize("kind", ["sparse", "sparse_csr", "quantized", "meta", "complex_half", "float8"])
def test_convert_refuses_tensors_numpy_cannot_hold(tmp_path, torch, kind):
    value, says = _odd_tensors(torch)[kind]
    _convert_refuses(tmp_path, torch, {"fc.bias": torch.zeros(2), "fc.weight": value}, "'fc.weight'", says)


def test_convert_refuses_tensors_hidden_in_containers_and_non_state_dicts(tmp_path, torch):
    _convert_refuses(tmp_path, torch, {"w": torch.zeros(2), "ema": {"w": torch.ones(2)}}, "'ema'", "dict of tensors")
    _convert_refuses(tmp_path, torch, {"net": {"w": torch.ones(2)}, "epoch": 3}, "'net'")
    _convert_refuses(tmp_path, torch, [torch.zeros(2)], "not hold a state dict")
    _convert_refuses(tmp_path, torch, {"file": torch.zeros(2)}, "'file'", "cannot be a key")


def test_convert_keeps_what_numpy_can_hold_exactly(tmp_path, torch):
    state = {"b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16), "c": torch.tensor([1 + 2j]).conj(), "step": 7}
    torch.save(state, tmp_path / "in.pth")
    assert serialization.convert_torch_checkpoint(tmp_path / "in.pth", tmp_path / "out.npz") == 2
    out = serialization.load(tmp_path / "out.npz")
    assert out["b"].dtype == np.float32 and out["b"].tolist() == [1.5, -2.25]
    assert out["c"].tolist() == [1 - 2j]


def test_convert_never_overwrites_its_source(tmp_path, torch):
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pth")
    refused(lambda: serialization.convert_torch_checkpoint(tmp_path / "w.pth", tmp_path / "w.pth"), ValueError,
            tmp_path, "w.pth", "is the source")


def _patched_pth(torch, tmp_path, old, new):
    """A .pth whose pickled description of tensor 'w' (shape (2, 3), 6 floats) has ``old`` replaced by ``new``."""
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "small.pth")
    with zipfile.ZipFile(tmp_path / "small.pth") as zin, zipfile.ZipFile(tmp_path / "in.pth", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(info, data)
    os.remove(tmp_path / "small.pth")
    return tmp_path / "in.pth"


@pytest.mark.parametrize("old, new", [(b"K\x06t", b"J" + struct.pack("<i", 2 ** 30) + b"t"),  # the storage
                                      (b"K\x02K\x03\x86", b"J\x00\x00\x10\x00J\x00\x00\x10\x00\x86")],  # the shape
                         ids=["storage", "shape"])
def test_convert_refuses_a_pth_that_claims_a_huge_tensor(tmp_path, torch, old, new):
    source = _patched_pth(torch, tmp_path, old, new)
    refused(lambda: serialization.convert_torch_checkpoint(source, tmp_path / "out.npz"), SerializationError,
            tmp_path, source, "torch.load(weights_only=True)")


@given(edits=edits, cut=st.one_of(st.just(0), st.integers(1, 1500)))
def test_convert_of_a_randomly_corrupted_pth_refuses_or_converts_exactly(edits, cut):
    torch = pytest.importorskip("torch")
    state = {"conv.weight": torch.arange(24.0).reshape(2, 3, 2, 2), "bn.num_batches_tracked": torch.tensor(5)}
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "in.pth"), os.path.join(folder, "out.npz")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(source, "wb") as f:
            f.write(_corrupt(buffer.getvalue(), edits, cut))
        try:
            serialization.convert_torch_checkpoint(source, target)
        except SerializationError as exc:
            assert source in str(exc)
            assert sorted(os.listdir(folder)) == ["in.pth"]
        else:
            out = serialization.load(target)
            assert sorted(out) == sorted(state)
            for key, value in state.items():
                assert out[key].tobytes() == value.numpy().tobytes(), key


# ---------------------------------------------------------------- the data readers


def raw_idx(magic, dims, data):
    return gzip.compress(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data)


@pytest.mark.parametrize("content, says", [
    (raw_idx(0x0803, (2 ** 31, 2 ** 31, 4), b""), "header says shape (2147483648, 2147483648, 4)"),  # wraps int64
    (raw_idx(0x0803, (2, 28, 28), bytes(2 * 28 * 28 + 5)), "trailing bytes"),
    (raw_idx(0x0803, (3, 28, 28), bytes(2 * 28 * 28)), "truncated"),
    (raw_idx(0x0D03, (2, 28, 28), bytes(4 * 2 * 28 * 28)), "expected 0x00000803"),
    (raw_idx(0x0803, (2,), b""), "truncated IDX header"),
    (b"\x1f\x8b" + b"\0" * 30, "damaged gzip"),
    (b"", "too short"),
], ids=["overflowing shape", "trailing bytes", "truncated", "float images", "short header", "bad gzip", "empty"])
def test_idx_reader_refuses_bad_files(tmp_path, content, says):
    (tmp_path / "images.gz").write_bytes(content)
    refused(lambda: formats.read_idx(tmp_path / "images.gz", formats.IDX_IMAGES_MAGIC), DataFormatError, tmp_path,
            tmp_path / "images.gz", says)


def _mnist_root(tmp_path, **replace):
    files, _, _ = mnist_files(n=4)
    files.update(replace)
    folder = tmp_path / "root"
    folder.mkdir(exist_ok=True)
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return folder


@pytest.mark.parametrize("name, body, says", [
    ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((4, 20, 20))), "images are 20x20, mnist images are 28x28"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.array([1, 2, 10, 3])), "labels must lie in 0..9"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.array([1, 2, 3])), "holds 3 labels"),
    ("train-labels-idx1-ubyte.gz", idx_bytes(np.zeros((4, 28, 28))), "expected 0x00000801"),
], ids=["image size", "label range", "label count", "images as labels"])
def test_mnist_refuses_files_that_are_not_its_own(tmp_path, name, body, says):
    root = _mnist_root(tmp_path, **{name: body})
    refused(lambda: get_dataset("mnist", root=root, download=False), DataFormatError, tmp_path, says)


@given(edits=edits, cut=st.one_of(st.just(0), st.integers(1, 200)))
def test_a_randomly_corrupted_idx_file_is_refused_or_read_exactly(edits, cut):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "images.gz")
        with open(path, "wb") as f:
            f.write(_corrupt(idx_bytes(images), edits, cut))
        try:
            got = formats.read_idx(path, formats.IDX_IMAGES_MAGIC)
        except DataFormatError as exc:
            assert path in str(exc)
        else:
            np.testing.assert_array_equal(got, images)


def test_cifar_records_with_labels_out_of_range_are_refused(tmp_path):
    record = bytes([200]) + bytes(3072)
    (tmp_path / "test_batch.bin").write_bytes(record * 2)
    refused(lambda: formats.read_cifar10(tmp_path / "test_batch.bin"), DataFormatError, tmp_path,
            tmp_path / "test_batch.bin", "labels must lie in 0..9, found 200..200")
    (tmp_path / "test_batch.bin").write_bytes(b"")
    refused(lambda: formats.read_cifar10(tmp_path / "test_batch.bin"), DataFormatError, tmp_path,
            "test_batch.bin", "not a whole number")


def tar_bytes(members, mode="w:gz"):
    """A tar archive of (TarInfo, data or None) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name, data=b"x", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("members, says", [
    ([member("a/ok.bin"), member("../escaped.bin")], "unsafe member '../escaped.bin'"),
    ([member("a/ok.bin"), member("a/../../escaped.bin")], "unsafe member"),
    ([member("/tmp/minires-escaped.bin")], "unsafe member"),
    ([member("C:/escaped.bin")], "unsafe member"),
    ([member("a/link", kind=tarfile.SYMTYPE, linkname="../../escaped.bin")], "not links"),
    ([member("a/ok.bin"), member("a/hard", kind=tarfile.LNKTYPE, linkname="a/ok.bin")], "not links"),
    ([member("a/dev", kind=tarfile.CHRTYPE)], "not links or devices"),
    ([member("a/fifo", kind=tarfile.FIFOTYPE)], "not links or devices"),
    ([member("a/x.bin", b"one"), member("a/./x.bin", b"two")], "appears twice"),
    ([member("a/x"), member("a/x/y.bin")], "both a file and a folder"),
    ([member("a/x", kind=tarfile.DIRTYPE), member("a/x", b"file")], "both a file and a folder"),
    ([member("./")], None),  # a nameless file, if tarfile keeps the type; a folder otherwise
], ids=["parent", "parent inside", "absolute", "drive", "symlink", "hard link", "device", "fifo", "duplicate",
        "file as folder", "folder as file", "nameless"])
def test_unsafe_or_ambiguous_archives_extract_nothing(tmp_path, members, says):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(tar_bytes(members))
    if says is None:
        info = tarfile.open(archive).getmembers()[0]
        if info.isdir():
            pytest.skip("tarfile reads the nameless member as a folder")
        says = "without a name"
    refused(lambda: formats.safe_extract(archive, tmp_path), DataFormatError, tmp_path, archive, says)
    assert not os.path.exists("/tmp/minires-escaped.bin") and not (tmp_path.parent / "escaped.bin").exists()


def _damaged_archives():
    body, _ = cifar_tar_bytes(per_batch=1)
    plain = gzip.decompress(body)  # the uncompressed tar
    block = tarfile.BLOCKSIZE
    size = 3073
    second = block + (size + block - 1) // block * block  # where the second member's header starts
    damaged_header = plain[:second] + b"\xff" * 100 + plain[second + 100:]
    return {
        "a member cut short": (plain[:second - 300], "damaged tar archive"),
        "cut at a member boundary": (plain[:second], "truncated tar archive"),
        "a damaged member header": (damaged_header, "data follows the end"),
        "a gzip stream cut short": (body[:len(body) // 2], "damaged tar archive"),
        "a gzip CRC that fails": (body[:-8] + bytes(b ^ 0xFF for b in body[-8:-4]) + body[-4:], "damaged tar"),
        "not an archive": (b"plain text, no tar" * 40, "damaged tar archive"),
    }


@pytest.mark.parametrize("case", list(_damaged_archives()))
def test_damaged_archives_extract_nothing(tmp_path, case):
    content, says = _damaged_archives()[case]
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(content)
    refused(lambda: formats.safe_extract(archive, tmp_path), DataFormatError, tmp_path, archive, says)


@given(edits=edits, cut=st.one_of(st.just(0), st.integers(1, 3000)))
def test_a_randomly_corrupted_archive_extracts_nothing_or_exactly_its_files(edits, cut):
    body, _ = cifar_tar_bytes(per_batch=1)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        truth = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    with tempfile.TemporaryDirectory() as folder:
        archive = os.path.join(folder, "cifar-10-binary.tar.gz")
        with open(archive, "wb") as f:
            f.write(_corrupt(body, edits, cut))
        dest = os.path.join(folder, "out")
        os.mkdir(dest)
        try:
            written = formats.safe_extract(archive, dest)
        except DataFormatError as exc:
            assert archive in str(exc)
            assert os.listdir(dest) == []
        else:
            assert sorted(written) == sorted(truth)
            for name, data in truth.items():
                with open(os.path.join(dest, name), "rb") as f:
                    assert f.read() == data, name


def test_cifar10_extraction_clears_what_a_crashed_extraction_left(tmp_path):
    body, _ = cifar_tar_bytes()
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(body)
    dead = _dead_pid()
    leftover = root / f".extract-{dl.owner_tag().rpartition('-')[0]}-{dead}.abc123"
    (leftover / "cifar-10-batches-bin").mkdir(parents=True)
    (leftover / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"half")
    assert len(get_dataset("cifar10", root=root, train=False, download=False)) == 2
    assert not leftover.exists()


# ---------------------------------------------------------------- downloads


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``self.server.body`` one byte every 20 ms (with its Content-Length), or 20 MB of zeros without one."""

    def do_GET(self):
        body, endless = self.server.body, self.server.endless
        self.send_response(200)
        if not endless:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if endless:
                for _ in range(320):  # about 6 MB/s for 3 s: more than any size here, and an end for a client
                    self.wfile.write(b"\0" * 65536)  # that would otherwise never stop reading
                    time.sleep(0.01)
                return
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    httpd.body, httpd.endless = b"", False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _resource(httpd, body, size=True):
    url = f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    return dl.Resource("file.bin", url, "sha256", hashlib.sha256(body).hexdigest(), len(body) if size else None)


def test_a_trickling_server_meets_the_overall_deadline(tmp_path, slow_server):
    slow_server.body = bytes(range(256)) * 4  # 1 KiB at 50 bytes a second: 20 s
    resource = _resource(slow_server, slow_server.body)
    started = time.monotonic()
    message = refused(lambda: dl.download(resource, tmp_path, progress=False, timeout=5, deadline=0.5), DownloadError,
                      tmp_path, resource.urls[0], "deadline", "Copy these files by hand into", "  file.bin ",
                      resource.digest)
    assert time.monotonic() - started < 3, "each byte came within the read timeout, yet the deadline must hold"
    assert "only" in message and "of 1024 bytes came" in message


def test_the_default_deadline_scales_with_the_file(tmp_path, slow_server, monkeypatch):
    slow_server.body = bytes(1000)
    monkeypatch.setattr(dl, "GRACE", 0.3)
    assert dl.default_deadline(None) == 0.3 + 3600 and dl.default_deadline(dl.MIN_RATE * 10) == 0.3 + 10
    refused(lambda: dl.download(_resource(slow_server, slow_server.body), tmp_path, progress=False), DownloadError,
            tmp_path, "deadline")


def test_an_endless_body_stops_at_the_registered_size(tmp_path, slow_server):
    slow_server.endless = True
    resource = _resource(slow_server, bytes(5000))
    refused(lambda: dl.download(resource, tmp_path, progress=False, timeout=5), DownloadError, tmp_path,
            "sent more than the 5000 bytes")
    resource = _resource(slow_server, bytes(5000), size=False)  # no size known: the deadline ends it
    refused(lambda: dl.download(resource, tmp_path, progress=False, timeout=5, deadline=0.5), DownloadError,
            tmp_path, "deadline", "of unknown bytes")


def test_a_server_announcing_the_wrong_size_is_refused_before_the_body(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files)
    name = "t10k-images-idx3-ubyte.gz"  # the first file fetched: a failure leaves the cache empty
    server.serve(name, files[name] + b"more")
    message = refused(lambda: get_dataset("mnist", train=False), DownloadError, tmp_path,
                      server.url(name), f"announces {len(files[name]) + 4} bytes")
    assert f"Copy these files by hand into {tmp_path / 'cache' / 'mnist'}, then" in message and name in message


def _dead_pid():
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_part_files_are_removed_and_live_ones_kept(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files)
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    host = dl.owner_tag().rpartition("-")[0]
    name = "t10k-labels-idx1-ubyte.gz"
    dead = folder / f".{name}.{host}-{_dead_pid()}.k2j3h4.part"
    live = folder / f".{name}.{dl.owner_tag()}.x8y9z0.part"  # this process: a download in another thread
    other_host = folder / f".{name}.elsewhere-1.q1w2e3.part"
    old = folder / f".{name}.abcdef.part"  # no owner: only its age tells
    other_file = folder / f".t10k-images-idx3-ubyte.gz.{host}-{_dead_pid()}.zzz.part"
    mine = folder / "notes.part"
    for path in (dead, live, other_host, old, other_file, mine):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * dl.STALE_AGE, time.time() - 2 * dl.STALE_AGE))
    dl.download(dl_resource(name), folder, progress=False)
    left = sorted(os.listdir(folder))
    assert left == sorted([name, live.name, other_host.name, other_file.name, mine.name])
    os.utime(other_host, (time.time() - 2 * dl.STALE_AGE, time.time() - 2 * dl.STALE_AGE))
    dl.download(dl_resource(name), folder, progress=False)
    assert not other_host.exists() and live.exists()


def dl_resource(name):
    from minires.data import datasets
    return datasets.RESOURCES["mnist"][name]


def test_a_killed_download_leaves_a_part_file_the_next_one_removes(tmp_path, slow_server):
    slow_server.body = bytes(range(256)) * 40
    resource = _resource(slow_server, slow_server.body)
    child = (f"from minires.data import download as dl\n"
             f"dl.download(dl.Resource('file.bin', {resource.urls[0]!r}, 'sha256', {resource.digest!r}, "
             f"{resource.size}), {str(tmp_path)!r}, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", child], env=dict(os.environ, no_proxy="127.0.0.1,localhost"))
    try:
        for _ in range(600):
            parts = [p for p in os.listdir(tmp_path) if p.endswith(".part")]
            if parts:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the child never started writing")
    finally:
        proc.kill()
        proc.wait()
    assert len(parts) == 1 and f"-{proc.pid}." in parts[0]
    slow_server.body = b"quick"
    resource = _resource(slow_server, slow_server.body)
    assert dl.download(resource, tmp_path, progress=False) == str(tmp_path / "file.bin")
    assert os.listdir(tmp_path) == ["file.bin"]


def test_two_downloads_of_one_file_at_once_both_succeed(server, tmp_path):
    files, _, _ = mnist_files(n=200)
    serve_mnist(server, files)
    folder = tmp_path / "cache" / "mnist"
    name = "train-images-idx3-ubyte.gz"
    results = []

    def fetch():
        results.append(dl.download(dl_resource(name), folder, progress=False))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [str(folder / name)] * 2
    assert os.listdir(folder) == [name] and (folder / name).read_bytes() == files[name]


# ---------------------------------------------------------------- the grader reads a copy's manifest, never runs it


def test_a_manifest_is_parsed_not_executed(tmp_path):
    copy = tmp_path / "copy"
    (copy / "minires" / "course").mkdir(parents=True)
    path = copy / manifest.MANIFEST
    path.write_text(manifest.manifest_text(["autograd.accumulate"], ["kernels/numba_cpu.py"],
                                           {"minires/ops.py": ["Mul"]}), encoding="utf-8")
    got = manifest.read_manifest(copy)
    assert got == {"assignments": (1,), "exercises": ("autograd.accumulate",),
                   "removed_modules": ("kernels/numba_cpu.py",), "removed_functions": {"minires/ops.py": ("Mul",)}}
    hostile = [f"import os\nos.mkdir({str(tmp_path / 'ran')!r})\n",
               f"EXERCISES = __import__('os').mkdir({str(tmp_path / 'ran')!r})\n",
               "ASSIGNMENTS = (1,)\nEXERCISES = 'not a tuple'\nREMOVED_MODULES = ()\nREMOVED_FUNCTIONS = {}\n",
               "ASSIGNMENTS = (1,)\n",
               "EXERCISES = (\n",
               "\xff\xfe not text"]
    for text in hostile:
        path.write_bytes(text.encode("latin-1"))
        got = manifest.read_manifest(copy)
        assert set(got) == {"error"} and str(path) in got["error"], got
        with pytest.raises(ValueError, match=str(path)):
            manifest.load(path)
    assert not (tmp_path / "ran").exists()


def test_load_and_convert_refuse_what_is_no_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.npz")
    refused(lambda: serialization.load(tmp_path / "pipe.npz"), SerializationError, tmp_path, "pipe.npz", "regular")
    refused(lambda: serialization.load(tmp_path / "none.npz"), FileNotFoundError, tmp_path, "none.npz")
    refused(lambda: serialization.convert_torch_checkpoint(tmp_path, tmp_path / "w.npz"), IsADirectoryError, tmp_path,
            "folder")
