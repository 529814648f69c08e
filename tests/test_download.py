"""Downloads through a loopback HTTP server: verified files land in the cache, bad ones leave nothing behind."""
import gzip
import hashlib
import http.server
import io
import os
import re
import struct
import tarfile
import threading

import numpy as np
import pytest

from minires.data import DataFormatError, DownloadError, cache_dir, get_dataset
from minires.data import datasets as registry
from minires.data.download import Resource

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        entry = self.server.files.get(self.path)
        if entry is None:
            self.send_error(404, "Not Found")
            return
        body, mode = entry
        self.send_response(200)
        if mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "truncate": announce the whole body, send half of it, hang up (HTTP/1.0 closes after each reply)
        self.wfile.write(body[:len(body) // 2] if mode == "truncate" else body)

    def log_message(self, *args):
        pass


class Server:
    """A file server on 127.0.0.1 whose files and registry entries a test sets up."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.hits = {}, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.httpd.hits

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def serve(self, name, body, mode="ok"):
        self.httpd.files["/" + name] = (body, mode)

    def register(self, dataset, filename, good_bytes, algorithm="sha256", size=True, urls=None):
        """Point the registry entry of ``filename`` here, with the hash (and size) of ``good_bytes``."""
        digest = hashlib.new(algorithm, good_bytes).hexdigest()
        entry = Resource(filename, urls or (self.url(filename),), algorithm, digest,
                         len(good_bytes) if size else None)
        self.monkeypatch.setitem(registry.RESOURCES[dataset], filename, entry)
        return entry

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("MINIRES_DATA_MIRROR", raising=False)  # the registry's URLs alone, unless a test sets mirrors
    s = Server(monkeypatch)
    yield s
    s.close()


def idx_bytes(array):
    """A gzipped IDX file written by hand: magic 0x0800 | ndim, big-endian sizes, then the bytes."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.tobytes())


def mnist_files(seed=0, n=6):
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    files = {"train-images-idx3-ubyte.gz": idx_bytes(images), "train-labels-idx1-ubyte.gz": idx_bytes(labels),
             "t10k-images-idx3-ubyte.gz": idx_bytes(images[:2]), "t10k-labels-idx1-ubyte.gz": idx_bytes(labels[:2])}
    return files, images, labels


def cache_files(tmp_path):
    """Every file under the cache folder, as paths relative to it."""
    root = tmp_path / "cache"
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def serve_mnist(server, files, algorithm="sha256"):
    for name, body in files.items():
        server.serve(name, body)
        server.register("mnist", name, body, algorithm)


# ---------------------------------------------------------------- success


def test_download_verifies_and_caches(server, tmp_path):
    files, images, labels = mnist_files()
    serve_mnist(server, files)
    train = get_dataset("mnist", train=True, download=True)
    np.testing.assert_allclose(train.images[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.labels, labels)
    assert cache_files(tmp_path) == ["mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"]
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == files[
        "train-images-idx3-ubyte.gz"]
    assert len(get_dataset("mnist", train=False)) == 2
    assert len(server.hits) == 4
    get_dataset("mnist", train=True, download=True)  # served from the cache now
    get_dataset("mnist", train=False, download=False)
    assert len(server.hits) == 4


def test_md5_registry_entries_verify_too(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files, algorithm="md5")
    assert len(get_dataset("mnist", train=False)) == 2


def test_next_mirror_is_tried(server, tmp_path):
    files, _, labels = mnist_files()
    serve_mnist(server, files)
    name = "train-labels-idx1-ubyte.gz"
    server.register("mnist", name, files[name], urls=(server.url("missing/" + name), server.url(name)))
    np.testing.assert_array_equal(get_dataset("mnist").labels, labels)
    assert "/missing/" + name in server.hits


# ---------------------------------------------------------------- failures leave nothing in the cache


def test_truncated_response_is_rejected(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files)
    server.serve("t10k-images-idx3-ubyte.gz", files["t10k-images-idx3-ubyte.gz"], mode="truncate")
    with pytest.raises(DownloadError) as err:
        get_dataset("mnist", train=False)
    message = str(err.value)
    size = len(files["t10k-images-idx3-ubyte.gz"])
    assert f"truncated: received {size // 2} of {size} bytes" in message
    assert "could not download t10k-images-idx3-ubyte.gz (nothing was saved" in message
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_corrupted_file_is_rejected(server, tmp_path, algorithm):
    files, _, _ = mnist_files()
    serve_mnist(server, files, algorithm)
    good = files["train-images-idx3-ubyte.gz"]
    bad = good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]  # same length, one byte flipped
    server.serve("train-images-idx3-ubyte.gz", bad)
    with pytest.raises(DownloadError) as err:
        get_dataset("mnist", train=True)
    want = (f"corrupted download ({algorithm} {hashlib.new(algorithm, bad).hexdigest()}, "
            f"expected {hashlib.new(algorithm, good).hexdigest()})")
    assert want in str(err.value)
    assert cache_files(tmp_path) == []
    assert not (tmp_path / "cache").exists()  # the folders it made are gone too


def test_short_file_without_content_length_fails_the_size_check(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files)
    good = files["t10k-labels-idx1-ubyte.gz"]
    server.serve("t10k-labels-idx1-ubyte.gz", good[:-3], mode="no-length")
    with pytest.raises(DownloadError, match=f"size {len(good) - 3} bytes, expected {len(good)}"):
        get_dataset("mnist", train=False)
    assert cache_files(tmp_path) == ["mnist/t10k-images-idx3-ubyte.gz"]  # the good file that came first stays


def test_missing_url_names_the_url_and_status(server, tmp_path):
    files, _, _ = mnist_files()
    for name, body in files.items():
        server.register("mnist", name, body)  # registered, never served
    with pytest.raises(DownloadError, match=re.escape(server.url("train-images-idx3-ubyte.gz")) + ": HTTP Error 404: Not Found"):
        get_dataset("mnist")
    assert cache_files(tmp_path) == []


# ---------------------------------------------------------------- where files go


def test_cache_folder_comes_from_minires_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "elsewhere"))
    assert cache_dir() == str(tmp_path / "elsewhere")
    monkeypatch.delenv("MINIRES_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "minires")


def test_root_overrides_the_cache(server, tmp_path):
    files, _, _ = mnist_files()
    serve_mnist(server, files)
    assert len(get_dataset("mnist", root=tmp_path / "mine", train=False)) == 2
    assert sorted(os.listdir(tmp_path / "mine" / "mnist")) == MNIST_FILES[2:]
    assert cache_files(tmp_path) == []


def test_download_false_names_the_cache_folder(server, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("fashion-mnist", download=False)
    assert str(tmp_path / "cache" / "fashion-mnist") in str(err.value)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and server.hits == []


def test_files_already_in_the_cache_need_no_network(server, tmp_path):
    files, _, labels = mnist_files(seed=3)
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    for name, body in files.items():
        (folder / name).write_bytes(body)
    np.testing.assert_array_equal(get_dataset("mnist").labels, labels)
    assert server.hits == []


# ---------------------------------------------------------------- CIFAR-10


def cifar_tar_bytes(extra=(), per_batch=2, seed=0):
    """A cifar-10-binary.tar.gz in memory: six batch files of hand-written records, plus ``extra`` members."""
    rng = np.random.default_rng(seed)
    buffer, labels = io.BytesIO(), {}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            images = rng.integers(0, 256, (per_batch, 3, 32, 32)).astype(np.uint8)
            labels[name] = rng.integers(0, 10, per_batch)
            data = b"".join(bytes([label]) + image[0].tobytes() + image[1].tobytes() + image[2].tobytes()
                            for image, label in zip(images, labels[name]))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), labels


def test_cifar10_archive_download_and_extraction(server, tmp_path):
    body, labels = cifar_tar_bytes()
    server.serve("cifar-10-binary.tar.gz", body)
    server.register("cifar10", "cifar-10-binary.tar.gz", body, algorithm="md5")
    test = get_dataset("cifar10", train=False)
    np.testing.assert_array_equal(test.labels, labels["test_batch.bin"])
    assert len(get_dataset("cifar10", train=True)) == 10
    assert len(server.hits) == 1
    assert "cifar10/cifar-10-batches-bin/data_batch_5.bin" in cache_files(tmp_path)


def test_cifar10_archive_with_a_parent_path_member_is_rejected(server, tmp_path):
    body, _ = cifar_tar_bytes(extra=[("../../escaped.bin", b"gotcha")])
    server.serve("cifar-10-binary.tar.gz", body)
    server.register("cifar10", "cifar-10-binary.tar.gz", body)
    with pytest.raises(DataFormatError, match=r"refusing to extract unsafe member '\.\./\.\./escaped\.bin'"):
        get_dataset("cifar10", train=False)
    assert cache_files(tmp_path) == ["cifar10/cifar-10-binary.tar.gz"]  # verified archive kept, nothing extracted
    assert not (tmp_path / "escaped.bin").exists() and not (tmp_path / "cache" / "escaped.bin").exists()


# ---------------------------------------------------------------- the real registry


def test_real_registry_entries_are_well_formed():
    assert set(registry.RESOURCES) == {"mnist", "fashion-mnist", "cifar10"}
    for dataset, entries in registry.RESOURCES.items():
        for filename, entry in entries.items():
            assert entry.filename == filename and entry.algorithm == "md5"
            assert re.fullmatch(r"[0-9a-f]{32}", entry.digest) and entry.size > 0
            assert all(url.startswith(("http://", "https://")) and url.endswith("/" + filename)
                       for url in entry.urls)
    assert sorted(registry.RESOURCES["mnist"]) == sorted(MNIST_FILES)
    assert registry.RESOURCES["cifar10"]["cifar-10-binary.tar.gz"].digest == "c32a1d4ab5d03f1284b67883e8d87530"
