"""Data mirrors ($MINIRES_DATA_MIRROR, --mirror) through loopback servers.

Every file a mirror serves is made here in the dataset's real format (gzipped IDX,
a CIFAR-10 binary archive), and the registry's checksums are the ones this test
computes for the right files. The official host is a loopback server too (the
``server`` fixture of test_download), so nothing here needs the network.
"""
import contextlib
import hashlib
import http.server
import io
import os
import socket
import threading

import numpy as np
import pytest

from minires import cli
from minires.data import DownloadError, get_dataset
from minires.data import download as dl
from test_download import cache_files, cifar_tar_bytes, mnist_files, serve_mnist
from test_download import server  # noqa: F401  (the loopback "official host" fixture, shared)

TEST_FILES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        mirror = self.server.mirror
        mirror.hits.append(self.path)
        mirror.seen.append((self.path, mirror.listing()))  # what the cache held when this request came
        body = mirror.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Mirror:
    """A loopback mirror: files under ``<base>/<dataset>/<file>``, the cache's layout, below a path prefix."""

    def __init__(self, cache, prefix="pub/minires"):
        self.cache, self.prefix, self.files, self.hits, self.seen = cache, prefix, {}, [], []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MirrorHandler)
        self.httpd.mirror = self
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{self.prefix}"

    def url(self, dataset, name):
        return f"{self.base}/{dataset}/{name}"

    def serve(self, dataset, files):
        for name, body in files.items():
            self.files[f"/{self.prefix}/{dataset}/{name}"] = body

    def listing(self):
        """Every file under the cache, hidden temporary files included."""
        return sorted(os.path.relpath(os.path.join(d, f), self.cache)
                      for d, _, fs in os.walk(self.cache) for f in fs)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirrors(tmp_path):
    made = []

    def make(prefix="pub/minires"):
        made.append(Mirror(str(tmp_path / "cache"), prefix))
        return made[-1]
    yield make
    for m in made:
        m.close()


def dead_url():
    """A base URL on a loopback port nobody listens on: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mirror"


def official(server, files):
    """Register the right files' checksums, pointing at the official host, which serves nothing."""
    for name, body in files.items():
        server.register("mnist", name, body, algorithm="md5")


def run_cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- a mirror that has the file


def test_a_mirror_is_tried_before_the_official_host(server, mirrors, tmp_path, monkeypatch):
    files, images, _ = mnist_files(seed=1)
    serve_mnist(server, files, algorithm="md5")  # the official host could serve them too
    mirror = mirrors()
    mirror.serve("mnist", files)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", mirror.base + "/")  # a trailing slash is fine
    test = get_dataset("mnist", train=False)
    np.testing.assert_allclose(test.images[:, 0], images[:2] / 255.0, rtol=1e-6)
    assert mirror.hits == [f"/pub/minires/mnist/{n}" for n in TEST_FILES]
    assert server.hits == []
    assert cache_files(tmp_path) == [f"mnist/{n}" for n in TEST_FILES]
    for name in TEST_FILES:
        assert (tmp_path / "cache" / "mnist" / name).read_bytes() == files[name]


def test_a_cifar10_archive_comes_from_a_mirror(server, mirrors, tmp_path, monkeypatch):
    body, labels = cifar_tar_bytes(seed=4)
    server.register("cifar10", "cifar-10-binary.tar.gz", body, algorithm="md5")  # registered, never served
    mirror = mirrors(prefix="datasets")
    mirror.serve("cifar10", {"cifar-10-binary.tar.gz": body})
    monkeypatch.setenv("MINIRES_DATA_MIRROR", mirror.base)
    np.testing.assert_array_equal(get_dataset("cifar10", train=False).labels, labels["test_batch.bin"])
    assert mirror.hits == ["/datasets/cifar10/cifar-10-binary.tar.gz"] and server.hits == []


def test_a_copied_cache_folder_is_a_mirror(server, tmp_path, monkeypatch):
    """The offline recipe: another machine's cache folder, copied here (say to a USB drive), given as a mirror."""
    files, _, labels = mnist_files(seed=2)
    official(server, files)
    other = tmp_path / "usb" / "minires-cache"
    (other / "mnist").mkdir(parents=True)
    for name, body in files.items():
        (other / "mnist" / name).write_bytes(body)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", f"{dead_url()}, {other}")  # a folder, after a dead mirror
    np.testing.assert_array_equal(get_dataset("mnist").labels, labels)
    assert server.hits == []
    monkeypatch.setenv("MINIRES_DATA_MIRROR", other.as_uri())  # the same as a file:// URL
    np.testing.assert_array_equal(get_dataset("mnist", train=False).labels, labels[:2])
    assert server.hits == []


# ---------------------------------------------------------------- a wrong file, a dead mirror: the next is tried


@pytest.mark.parametrize("wrong", ["other images", "one byte flipped"])
def test_a_wrong_file_is_rejected_nothing_kept_and_the_next_mirror_tried(server, mirrors, tmp_path, monkeypatch,
                                                                         wrong):
    files, images, _ = mnist_files(seed=5)
    official(server, files)
    name = "t10k-images-idx3-ubyte.gz"
    if wrong == "other images":  # a real IDX file of the right kind, not the registered one
        bad = mnist_files(seed=6)[0][name]
    else:  # the same size, so only the checksum tells
        bad = files[name][:30] + bytes([files[name][30] ^ 0x01]) + files[name][31:]
    first, second = mirrors(prefix="a"), mirrors(prefix="b")
    first.serve("mnist", {**files, name: bad})
    second.serve("mnist", files)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", f"{first.base},{second.base}")
    test = get_dataset("mnist", train=False)
    np.testing.assert_allclose(test.images[:, 0], images[:2] / 255.0, rtol=1e-6)
    assert first.hits == [f"/a/mnist/{name}", "/a/mnist/t10k-labels-idx1-ubyte.gz"]
    assert second.hits == [f"/b/mnist/{name}"] and server.hits == []
    # when the second mirror was asked, nothing of the first one's file was left: the cache held only
    # the second try's own temporary file, not the first one's, nor anything under the file's name
    (_, during_first), = [s for s in first.seen if s[0] == f"/a/mnist/{name}"]
    (_, during_second), = second.seen
    assert len(during_first) == 1 and during_first[0].endswith(".part")
    assert len(during_second) == 1 and during_second[0].endswith(".part") and during_second != during_first
    assert (tmp_path / "cache" / "mnist" / name).read_bytes() == files[name]
    assert cache_files(tmp_path) == [f"mnist/{n}" for n in TEST_FILES]


def test_a_wrong_file_is_not_kept_even_when_no_source_has_the_right_one(server, mirrors, tmp_path, monkeypatch):
    files, _, _ = mnist_files(seed=7)
    official(server, files)
    mirror = mirrors()
    mirror.serve("mnist", mnist_files(seed=8)[0])  # every file real, none the registered one
    monkeypatch.setenv("MINIRES_DATA_MIRROR", mirror.base)
    with pytest.raises(DownloadError) as err:
        get_dataset("mnist", train=False)
    name = TEST_FILES[0]
    digest = hashlib.md5(mnist_files(seed=8)[0][name]).hexdigest()
    assert mirror.url("mnist", name) in str(err.value)
    assert f"corrupted download (md5 {digest}, expected {hashlib.md5(files[name]).hexdigest()})" in str(err.value) \
        or "announces" in str(err.value)
    assert cache_files(tmp_path) == [] and not (tmp_path / "cache").exists()


def test_a_dead_mirror_is_passed_over(server, mirrors, tmp_path, monkeypatch):
    files, _, labels = mnist_files(seed=9)
    official(server, files)
    mirror = mirrors()
    mirror.serve("mnist", files)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", f"{dead_url()},{mirror.base}")
    np.testing.assert_array_equal(get_dataset("mnist").labels, labels)
    assert sorted(mirror.hits) == sorted(f"/pub/minires/mnist/{n}" for n in MNIST_TRAIN) and server.hits == []


def test_when_every_mirror_fails_the_official_host_is_tried(server, mirrors, tmp_path, monkeypatch):
    files, _, labels = mnist_files(seed=10)
    serve_mnist(server, files, algorithm="md5")
    empty = mirrors()  # answers 404
    monkeypatch.setenv("MINIRES_DATA_MIRROR", f"{dead_url()},{empty.base}")
    np.testing.assert_array_equal(get_dataset("mnist", train=False).labels, labels[:2])
    assert len(empty.hits) == 2 and len(server.hits) == 2


MNIST_TRAIN = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


# ---------------------------------------------------------------- every source fails: one message that says what to do


def _all_dead(server, mirrors, monkeypatch):
    files, _, _ = mnist_files(seed=11)
    for name, body in files.items():  # the official host is dead too
        server.register("mnist", name, body, algorithm="md5", urls=(f"{dead_url()}/official/{name}",))
    empty = mirrors()
    return files, [dead_url(), empty.base]


def _check_the_message(message, files, bases, server, folder):
    from minires.data import datasets
    lines = message.splitlines()
    name = MNIST_TRAIN[0]
    urls = [f"{bases[0]}/mnist/{name}", f"{bases[1]}/mnist/{name}", datasets.RESOURCES["mnist"][name].urls[0]]
    assert f"could not download {name} (nothing was saved to {folder}). Tried 3 URLs, in order:" in lines[0]
    tried = lines[1:4]  # each URL tried, in order, and why it failed
    assert [t.split(": ", 1)[0].strip() for t in tried] == urls
    assert "Connection refused" in tried[0] and "HTTP Error 404: Not Found" in tried[1]
    assert "Connection refused" in tried[2]
    assert lines[4].startswith(f"Copy these files by hand into {folder}, then run the command again.")
    # the exact files, with their checks: this split's, then the test split's (minires train reads both)
    assert len(lines) == 10 and "MINIRES_DATA_MIRROR" in lines[9]
    for line, f in zip(lines[5:9], MNIST_TRAIN + TEST_FILES):
        assert line.split() == [f, "md5", hashlib.md5(files[f]).hexdigest() + ",", str(len(files[f])), "bytes",
                                datasets.RESOURCES["mnist"][f].urls[0]]


def test_all_sources_dead_one_message_lists_every_url_and_the_files_to_copy(server, mirrors, tmp_path, monkeypatch):
    files, bases = _all_dead(server, mirrors, monkeypatch)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", ",".join(bases))
    with pytest.raises(DownloadError) as err:
        get_dataset("mnist", train=True)
    _check_the_message(str(err.value), files, bases, server, str(tmp_path / "cache" / "mnist"))
    assert cache_files(tmp_path) == [] and not (tmp_path / "cache").exists()


def test_the_command_line_all_dead_exits_1_with_the_message_and_no_traceback(server, mirrors, tmp_path,
                                                                              monkeypatch):
    files, bases = _all_dead(server, mirrors, monkeypatch)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", "http://127.0.0.1:9/never-tried")  # --mirror replaces it
    monkeypatch.delenv("MINIRES_DEBUG", raising=False)
    code, out, err = run_cli(["train", "--data", "mnist", "--kernels", "numpy", "--quiet", "--out",
                              str(tmp_path / "runs"), "--mirror", ",".join(bases)])
    assert code == 1 and "Traceback" not in err and "never-tried" not in err
    assert err.startswith("minires train: error: could not download")
    _check_the_message(err.removeprefix("minires train: error: ").rstrip("\n"), files, bases, server,
                       str(tmp_path / "cache" / "mnist"))
    assert os.environ["MINIRES_DATA_MIRROR"] == "http://127.0.0.1:9/never-tried"  # restored
    assert cache_files(tmp_path) == []


def test_mirror_on_the_command_line_replaces_the_variable(server, mirrors, tmp_path, monkeypatch):
    files, _, _ = mnist_files(seed=12)
    official(server, files)
    wrong, right = mirrors(prefix="wrong"), mirrors(prefix="right")
    wrong.serve("mnist", mnist_files(seed=13)[0])
    right.serve("mnist", files)
    monkeypatch.setenv("MINIRES_DATA_MIRROR", wrong.base)
    seen = []
    monkeypatch.setattr(cli, "_eval", lambda args: seen.append(get_dataset("mnist", train=False)))
    monkeypatch.setattr(cli, "_check_eval", lambda args: None)
    code, _, err = run_cli(["eval", "some-run", "--data", "mnist", "--mirror", right.base])
    assert code == 0, err
    assert len(seen[0]) == 2 and wrong.hits == [] and len(right.hits) == 2 and server.hits == []


@pytest.mark.parametrize("verb", [["train"], ["eval", "x"], ["experiment", "degradation"]])
def test_every_verb_that_reads_data_takes_mirror(verb):
    parser = cli.build_parser()
    args = parser.parse_args(verb + ["--mirror", "http://a.example/x/, https://b.example"])
    assert args.mirror == ("http://a.example/x", "https://b.example")


@pytest.mark.parametrize("value", ["ftp://mirror.example/minires", "https://ok.example,gopher://x"])
def test_a_mirror_minires_cannot_read_is_a_usage_error(value, monkeypatch, tmp_path):
    code, _, err = run_cli(["train", "--data", "mnist", "--mirror", value, "--out", str(tmp_path)])
    assert code == 2 and "--mirror" in err and "is not a mirror minires can read" in err and "Traceback" not in err
    monkeypatch.setenv("MINIRES_DATA_MIRROR", value)
    with pytest.raises(ValueError, match="MINIRES_DATA_MIRROR: .* is not a mirror minires can read"):
        dl.mirrors()
    assert os.listdir(tmp_path) == []


def test_parse_mirrors_keeps_the_order_and_drops_repeats(tmp_path):
    assert dl.parse_mirrors(" http://a/ ,, https://b/c/,http://a") == ("http://a", "https://b/c")
    assert dl.parse_mirrors(str(tmp_path)) == (tmp_path.as_uri(),)
    assert dl.parse_mirrors("") == ()
