"""Data: DataLoader batching and shuffling, batch transforms against per-image loops, datasets and file formats."""
import gzip
import io
import json
import os
import struct
import tarfile

import numpy as np
import pytest

import minires
from minires.data import (ArrayDataset, Compose, DataFormatError, DataLoader, Dataset, Normalize, RandomCrop,
                          RandomHorizontalFlip, dataset_info, get_dataset, list_datasets, read_idx)


def _toy(n=10, c=1, h=4, w=4, transform=None):
    images = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    return ArrayDataset(images, np.arange(n) % 3, transform=transform)


def _epoch(loader):
    return [(x.numpy().copy(), y.numpy().copy()) for x, y in loader]


# ---------------------------------------------------------------- ArrayDataset


def test_array_dataset_items_and_batch():
    ds = _toy()
    image, label = ds[4]
    assert image.shape == (1, 4, 4) and image.dtype == np.float32 and isinstance(label, int)
    assert image[0, 0, 0] == 4 * 16 and label == 1
    images, labels = ds.batch([7, 2, 7])
    assert images.shape == (3, 1, 4, 4) and labels.dtype == np.int64
    assert images[:, 0, 0, 0].tolist() == [7 * 16, 2 * 16, 7 * 16] and labels.tolist() == [1, 2, 1]


def test_array_dataset_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ArrayDataset(np.zeros((5, 8, 8)), np.zeros(5, int))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        ArrayDataset(np.zeros((5, 1, 8, 8)), np.zeros(4, int))
    with pytest.raises(ValueError, match="integer labels"):
        ArrayDataset(np.zeros((5, 1, 8, 8)), np.zeros(5))


# ---------------------------------------------------------------- DataLoader


def test_loader_batches_in_order_without_shuffle():
    loader = DataLoader(_toy(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert [x.shape for x, _ in batches] == [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    x, y = batches[0]
    assert isinstance(x, minires.Tensor) and x.dtype == np.float32 and y.dtype == np.int64
    firsts = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in batches])
    np.testing.assert_array_equal(firsts, np.arange(10) * 16)


def test_loader_moves_batches_to_its_device():
    dataset = _toy(6)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        DataLoader(dataset, batch_size=4, device="tpu")
    assert all(x.device == "cpu" and y.device == "cpu" for x, y in DataLoader(dataset, batch_size=4))
    if not minires.cuda.is_available():
        with pytest.raises(RuntimeError, match="DataLoader: device='cuda' needs CuPy"):
            DataLoader(dataset, batch_size=4, device="cuda")
        return
    host = [x.numpy() for x, _ in DataLoader(dataset, batch_size=4)]
    moved = list(DataLoader(dataset, batch_size=4, device="cuda"))
    assert all(x.device == "cuda" and y.device == "cuda" for x, y in moved)
    for (x, _), want in zip(moved, host):
        np.testing.assert_array_equal(x.numpy(), want)


@pytest.mark.parametrize("n, bs, drop_last, expected", [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2),
                                                        (8, 4, False, 2), (3, 5, False, 1), (3, 5, True, 0)])
def test_loader_len_and_drop_last(n, bs, drop_last, expected):
    loader = DataLoader(_toy(n), batch_size=bs, shuffle=True, drop_last=drop_last, seed=0)
    batches = list(loader)
    assert len(loader) == expected == len(batches)
    assert all(len(y) == bs for _, y in batches) if drop_last else sum(len(y) for _, y in batches) == n


def test_loader_shuffle_is_a_fresh_seeded_permutation_each_epoch():
    n, seed = 50, 7
    loader = DataLoader(_toy(n), batch_size=8, shuffle=True, seed=seed)
    reference = np.random.default_rng(seed)
    orders = []
    for _ in range(3):
        order = np.concatenate([x.numpy()[:, 0, 0, 0] / 16 for x, _ in loader]).astype(int)
        np.testing.assert_array_equal(order, reference.permutation(n))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1]) and loader.epoch == 3


def test_loader_determinism_and_seed_from_global_generator():
    a = _epoch(DataLoader(_toy(30), 4, shuffle=True, seed=3))
    b = _epoch(DataLoader(_toy(30), 4, shuffle=True, seed=3))
    c = _epoch(DataLoader(_toy(30), 4, shuffle=True, seed=4))
    assert all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    minires.manual_seed(11)
    d = _epoch(DataLoader(_toy(30), 4, shuffle=True))
    minires.manual_seed(11)
    e = _epoch(DataLoader(_toy(30), 4, shuffle=True))
    assert all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(d, e))


def _augmenting_dataset():
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.random((20, 2, 6, 6), dtype=np.float32), rng.integers(0, 3, 20),
                        transform=Compose([RandomCrop(6, padding=2), RandomHorizontalFlip()]))


def test_loader_state_dict_resumes_the_same_batches():
    straight = DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=5)
    expected = [_epoch(straight) for _ in range(3)]

    first = DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=5)
    _epoch(first)
    saved = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    assert saved["epoch"] == 1
    resumed = DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=999)
    resumed.load_state_dict(saved)
    got = [_epoch(resumed) for _ in range(2)]
    for want_epoch, got_epoch in zip(expected[1:], got):
        for (wx, wy), (gx, gy) in zip(want_epoch, got_epoch):
            np.testing.assert_array_equal(wx, gx)
            np.testing.assert_array_equal(wy, gy)
    assert resumed.epoch == 3


def test_loader_state_dict_mid_epoch_describes_the_epoch_start():
    loader = DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=5)
    whole = _epoch(DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=5))
    for _ in loader:
        state = loader.state_dict()
        break
    assert state["epoch"] == 0
    again = DataLoader(_augmenting_dataset(), 6, shuffle=True, seed=1)
    again.load_state_dict(state)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(whole, _epoch(again)))


def test_loader_load_state_dict_rejects_garbage():
    loader = DataLoader(_toy(), 2)
    with pytest.raises(ValueError, match="epoch"):
        loader.load_state_dict({"bit_generator": {}})
    with pytest.raises(ValueError, match="PCG64"):
        loader.load_state_dict({"epoch": 1, "bit_generator": {"bit_generator": "MT19937"}})


def test_loader_applies_the_batch_transform_with_its_generator():
    ds = _toy(10, transform=RandomHorizontalFlip(0.5))
    got = np.concatenate([x.numpy() for x, _ in DataLoader(ds, 4, seed=2)])
    rng, expected = np.random.default_rng(2), []
    for start in range(0, 10, 4):  # shuffle=False draws nothing for the order
        flips = rng.random(min(4, 10 - start)) < 0.5
        for k, i in enumerate(range(start, min(start + 4, 10))):
            expected.append(ds.images[i][:, :, ::-1] if flips[k] else ds.images[i])
    np.testing.assert_array_equal(got, np.stack(expected))
    assert not np.array_equal(got, ds.images)  # some image was flipped


class _ListDataset(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((1, 2, 2), i, np.float64), i * 10


def test_loader_stacks_a_generic_dataset():
    batches = list(DataLoader(_ListDataset(5), batch_size=2))
    assert [y.numpy().tolist() for _, y in batches] == [[0, 10], [20, 30], [40]]
    x = batches[1][0]
    assert x.dtype == np.float32 and x.shape == (2, 1, 2, 2) and x.numpy()[1].max() == 3


@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "4", None])
def test_loader_rejects_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_toy(), bs)


@pytest.mark.parametrize("n, bs", [(10, 3), (9, 3), (1, 4), (7, 7), (1437, 359), (1437, 64)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_drop_last_and_len_match_torch(torch, n, bs, drop_last):
    ours = DataLoader(_toy(n), bs, shuffle=True, drop_last=drop_last, seed=0)
    theirs = torch.utils.data.DataLoader(list(range(n)), batch_size=bs, shuffle=True, drop_last=drop_last)
    assert len(ours) == len(theirs)
    assert [len(y) for _, y in ours] == [len(b) for b in theirs]


@pytest.mark.parametrize("name, value", [("shuffle", "yes"), ("shuffle", None), ("drop_last", 1),
                                         ("drop_last", "False")])
def test_loader_flags_must_be_booleans_as_in_torch(name, value):
    with pytest.raises(ValueError, match=name):
        DataLoader(_toy(), 2, **{name: value})


# ---------------------------------------------------------------- transforms


def _random_batch(n=16, c=3, h=8, w=8, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


@pytest.mark.parametrize("size, padding", [(8, 2), (6, 0), ((5, 7), 1)])
def test_random_crop_matches_a_per_image_loop(size, padding):
    x = _random_batch()
    got = RandomCrop(size, padding)(x, np.random.default_rng(3))
    sh, sw = (size, size) if isinstance(size, int) else size
    n, c, h, w = x.shape
    rng = np.random.default_rng(3)
    tops = rng.integers(0, h + 2 * padding - sh + 1, size=n)
    lefts = rng.integers(0, w + 2 * padding - sw + 1, size=n)
    for i in range(n):
        padded = np.zeros((c, h + 2 * padding, w + 2 * padding), np.float32)
        padded[:, padding:padding + h, padding:padding + w] = x[i]
        np.testing.assert_array_equal(got[i], padded[:, tops[i]:tops[i] + sh, lefts[i]:lefts[i] + sw])
    assert got.shape == (n, c, sh, sw) and got.dtype == np.float32


def test_random_crop_offsets_are_per_image_and_cover_every_position():
    n = 400
    x = np.broadcast_to(np.arange(1, 17, dtype=np.float32).reshape(1, 1, 4, 4), (n, 1, 4, 4)).copy()
    out = RandomCrop(4, padding=1)(x, np.random.default_rng(0))
    # pixel 6 sits at (1, 1) of the image, (2, 2) of the padded one: in a crop at (top, left) it is at
    # (2 - top, 2 - left); the crop is then the padded image's window at that offset
    found = set()
    for crop in out[:, 0]:
        (row, col), = np.argwhere(crop == 6)
        top, left = 2 - row, 2 - col
        padded = np.pad(x[0, 0], 1)
        np.testing.assert_array_equal(crop, padded[top:top + 4, left:left + 4])
        found.add((int(top), int(left)))
    assert found == {(t, l) for t in range(3) for l in range(3)}


def test_random_crop_identity_without_padding_and_bad_sizes():
    x = _random_batch()
    np.testing.assert_array_equal(RandomCrop(8)(x, np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(12, padding=1)(x)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        RandomCrop(4)(x[0])


def test_random_flip_matches_a_per_image_loop():
    x = _random_batch(n=64)
    got = RandomHorizontalFlip(0.5)(x, np.random.default_rng(9))
    flips = np.random.default_rng(9).random(64) < 0.5
    for i in range(64):
        want = np.array([[row[::-1] for row in channel] for channel in x[i]]) if flips[i] else x[i]
        np.testing.assert_array_equal(got[i], want)
    assert 10 < flips.sum() < 54


def test_random_flip_extremes():
    x = _random_batch()
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x), x)
    np.testing.assert_array_equal(RandomHorizontalFlip(1.0)(x), x[:, :, :, ::-1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RandomHorizontalFlip(1.5)


def test_normalize_matches_a_per_channel_loop_and_compose_order():
    x = _random_batch()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    got = Normalize(mean, std)(x)
    for ch in range(3):
        np.testing.assert_allclose(got[:, ch], (x[:, ch] - mean[ch]) / std[ch], rtol=1e-6)
    assert got.dtype == np.float32
    both = Compose([Normalize(mean, std), RandomHorizontalFlip(1.0)])(x, np.random.default_rng(0))
    np.testing.assert_allclose(both, got[..., ::-1], rtol=1e-6)
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        Normalize(mean, std)(x[:, :1])


# ---------------------------------------------------------------- digits and the registry


def test_digits_split_is_fixed_stratified_and_scaled():
    from sklearn.datasets import load_digits
    target = load_digits().target
    train, test = get_dataset("digits", train=True), get_dataset("digits", train=False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == np.float32
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [36] * 10)
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), np.bincount(target) - 36)
    for ds in (train, test):
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        np.testing.assert_array_equal(np.unique(ds.images * 16), np.arange(17))  # 0..16 scaled by 1/16
    np.testing.assert_array_equal(get_dataset("digits", train=False).images, test.images)  # fixed split
    # the two splits partition the 1,797 images
    everything = np.sort(load_digits().data.reshape(-1, 64) / 16, axis=0)
    joined = np.sort(np.concatenate([train.images, test.images]).reshape(-1, 64), axis=0)
    np.testing.assert_allclose(joined, everything)


def test_digits_info_matches_its_data():
    train, info = get_dataset("digits"), dataset_info("digits")
    assert train.info is info
    assert (info.in_channels, info.num_classes, info.image_size, info.shape) == (1, 10, 8, (1, 8, 8))
    assert (info.train_size, info.test_size) == (1437, 360) and len(info.classes) == 10
    assert abs(train.images.mean() - info.mean[0]) < 1e-3 and abs(train.images.std() - info.std[0]) < 1e-3


def test_registry_names_and_unknown_dataset():
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist"]
    for name in list_datasets():
        info = dataset_info(name)
        assert len(info.mean) == len(info.std) == info.in_channels and len(info.classes) == info.num_classes
    assert dataset_info("CIFAR-10").name == "cifar10" and dataset_info("fashion_mnist").classes[9] == "Ankle boot"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of: cifar10, digits, "
                                         "fashion-mnist, mnist"):
        get_dataset("imagenet")


# ---------------------------------------------------------------- IDX files (MNIST, Fashion-MNIST)


def write_idx(path, array, magic=None, cut=0):
    """Write ``array`` (uint8) as a gzipped IDX file by hand: magic, big-endian sizes, bytes; drop ``cut`` bytes."""
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw[:len(raw) - cut])
    return path


def _mnist_folder(folder, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
        arrays[prefix] = images, labels
    return arrays


def test_read_idx_by_hand(tmp_path):
    path = write_idx(tmp_path / "x.gz", [[1, 2, 3], [250, 0, 7]])
    got = read_idx(path)
    assert got.shape == (2, 3) and got.dtype == np.uint8 and got.tolist() == [[1, 2, 3], [250, 0, 7]]
    raw = struct.pack(">IIII", 0x00000803, 1, 2, 2) + bytes([9, 8, 7, 6])  # an uncompressed file
    (tmp_path / "plain").write_bytes(raw)
    assert read_idx(tmp_path / "plain").tolist() == [[[9, 8], [7, 6]]]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_from_a_local_folder(tmp_path, name):
    arrays = _mnist_folder(tmp_path)
    train = get_dataset(name, root=tmp_path, train=True, download=False)
    test = get_dataset(name, root=tmp_path, train=False, download=False)
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 5 and train.info.name == name
    np.testing.assert_allclose(train.images[:, 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, arrays["t10k"][1])


def test_idx_in_a_named_subfolder_of_root(tmp_path):
    (tmp_path / "mnist").mkdir()
    arrays = _mnist_folder(tmp_path / "mnist")
    assert len(get_dataset("mnist", root=tmp_path, download=False)) == len(arrays["train"][1])


def test_idx_files_already_gunzipped(tmp_path):
    arrays = _mnist_folder(tmp_path)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((tmp_path / (name + ".gz")).read_bytes()))
        os.remove(tmp_path / (name + ".gz"))
    test = get_dataset("mnist", root=tmp_path, train=False, download=False)
    np.testing.assert_array_equal(test.labels, arrays["t10k"][1])


def test_idx_wrong_magic_is_rejected(tmp_path):
    _mnist_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28)), magic=0x00000903)
    with pytest.raises(DataFormatError, match="magic number is 0x00000903, expected 0x00000803"):
        get_dataset("mnist", root=tmp_path, download=False)
    # a labels file where the images should be
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(12))
    with pytest.raises(DataFormatError, match="expected 0x00000803"):
        get_dataset("mnist", root=tmp_path, download=False)


def test_idx_truncated_and_inconsistent_files_are_rejected(tmp_path):
    _mnist_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28)), cut=100)
    with pytest.raises(DataFormatError, match=r"truncated: header says shape \(12, 28, 28\) \(9408 data bytes\)"
                                              r", file has 9308"):
        get_dataset("mnist", root=tmp_path, download=False)
    full = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(full[:len(full) // 2])  # a cut-off gzip stream
    with pytest.raises(DataFormatError, match="damaged gzip"):
        get_dataset("mnist", root=tmp_path, train=False, download=False)
    _mnist_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11))
    with pytest.raises(DataFormatError, match="holds 12 images but .* holds 11 labels"):
        get_dataset("mnist", root=tmp_path, download=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(12, 10))
    with pytest.raises(DataFormatError, match=r"labels must lie in 0..9"):
        get_dataset("mnist", root=tmp_path, download=False)


def test_missing_files_without_download_name_the_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("mnist", root=tmp_path / "nowhere", train=False, download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "download=False" in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    with pytest.raises(FileNotFoundError, match=r"data_batch_1\.bin.*cifar-10-binary\.tar\.gz"):
        get_dataset("cifar10", root=tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR-10 binary


def cifar_records(images, labels):
    """CIFAR-10 binary records written by hand: a label byte, then the red, green and blue planes row by row."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for plane in image:  # R, G, B
            for row in plane:
                out.extend(int(v) for v in row)
    return bytes(out)


def make_cifar_tar(path, per_batch=3, seed=0, extra=()):
    """A cifar-10-binary.tar.gz in the real layout with ``per_batch`` records per batch file."""
    rng = np.random.default_rng(seed)
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            images = rng.integers(0, 256, (per_batch, 3, 32, 32)).astype(np.uint8)
            labels = rng.integers(0, 10, per_batch)
            data = cifar_records(images, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            truth[name] = images, labels
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return truth


def test_cifar10_binary_from_a_local_archive(tmp_path):
    truth = make_cifar_tar(tmp_path / "cifar-10-binary.tar.gz")
    train = get_dataset("cifar10", root=tmp_path, train=True, download=False)
    test = get_dataset("cifar10", root=tmp_path, train=False, download=False)
    assert train.images.shape == (15, 3, 32, 32) and len(test) == 3 and train.info.in_channels == 3
    want = np.concatenate([truth[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    np.testing.assert_allclose(train.images, want / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, truth["test_batch.bin"][1])
    assert (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").is_file()  # extracted next to the archive
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".extract")]


def test_cifar10_bad_record_size_is_rejected(tmp_path):
    make_cifar_tar(tmp_path / "cifar-10-binary.tar.gz")
    get_dataset("cifar10", root=tmp_path, train=False, download=False)
    batch = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="not a whole number of CIFAR-10 records"):
        get_dataset("cifar10", root=tmp_path, train=False, download=False)


def _member(name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("member", [_member("../escaped.bin"), _member("cifar-10-batches-bin/../../escaped.bin"),
                                    _member("/tmp/escaped-minires.bin"),
                                    _member("cifar-10-batches-bin/link", tarfile.SYMTYPE, linkname="/etc/passwd")])
def test_unsafe_tar_members_are_rejected(tmp_path, member):
    root = tmp_path / "root"
    root.mkdir()
    make_cifar_tar(root / "cifar-10-binary.tar.gz", extra=[member])
    with pytest.raises(DataFormatError, match="refusing to extract"):
        get_dataset("cifar10", root=root, download=False)
    assert not (tmp_path / "escaped.bin").exists() and not os.path.exists("/tmp/escaped-minires.bin")
    assert sorted(os.listdir(root)) == ["cifar-10-binary.tar.gz"]  # nothing extracted at all
