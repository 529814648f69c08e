"""The named datasets: metadata, where their files come from, and ``get_dataset``.

``digits`` ships with scikit-learn and needs no network. ``mnist``,
``fashion-mnist`` and ``cifar10`` are read from their original files (IDX and
CIFAR-10 binary) found in ``root`` or in the cache, and downloaded into the
cache (``$MINIRES_DATA``, default ``~/.cache/minires``) when missing: from the
mirrors of ``$MINIRES_DATA_MIRROR`` first (each laid out as ``<base>/<dataset>/<file>``,
like the cache), then from the official hosts below.
"""
import os

import numpy as np

from .dataset import ArrayDataset, DatasetInfo
from .download import Resource, cache_dir, download
from .formats import DataFormatError, read_cifar10, read_idx_pair, safe_extract

_DIGITS = tuple(str(d) for d in range(10))

INFO = {
    "digits": DatasetInfo(
        "digits", 1, 10, 8, mean=(0.3054,), std=(0.3761,), classes=_DIGITS, train_size=1437, test_size=360,
        source="scikit-learn's copy of the UCI optical handwritten digits (8x8, values 0..16)"),
    "mnist": DatasetInfo(
        "mnist", 1, 10, 28, mean=(0.1307,), std=(0.3081,), classes=_DIGITS, train_size=60000, test_size=10000,
        source="https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 10, 28, mean=(0.2860,), std=(0.3530,),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        train_size=60000, test_size=10000, source="https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": DatasetInfo(
        "cifar10", 3, 10, 32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        train_size=50000, test_size=10000, source="https://www.cs.toronto.edu/~kriz/cifar.html"),
}

# The hashes are MD5: for MNIST and Fashion-MNIST they are the ones torchvision's
# source lists for these files (Fashion-MNIST's README publishes the same), for
# CIFAR-10 the one on the dataset's page. No SHA-256 is published by the
# authors, and MD5 is enough to catch truncated and corrupted downloads.
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
RESOURCES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": Resource("train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
                                               "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        "train-labels-idx1-ubyte.gz": Resource("train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
                                               "md5", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
        "t10k-images-idx3-ubyte.gz": Resource("t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
                                              "md5", "9fb629c4189551a2d022fa330f9573f3", 1648877),
        "t10k-labels-idx1-ubyte.gz": Resource("t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
                                              "md5", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": Resource("train-images-idx3-ubyte.gz",
                                               _FASHION + "train-images-idx3-ubyte.gz",
                                               "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        "train-labels-idx1-ubyte.gz": Resource("train-labels-idx1-ubyte.gz",
                                               _FASHION + "train-labels-idx1-ubyte.gz",
                                               "md5", "25c81989df183df01b3e8a0aad5dffbe", 29515),
        "t10k-images-idx3-ubyte.gz": Resource("t10k-images-idx3-ubyte.gz", _FASHION + "t10k-images-idx3-ubyte.gz",
                                              "md5", "bef4ecab320f06d8554ea6380940ec79", 4422102),
        "t10k-labels-idx1-ubyte.gz": Resource("t10k-labels-idx1-ubyte.gz", _FASHION + "t10k-labels-idx1-ubyte.gz",
                                              "md5", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
    },
    "cifar10": {
        "cifar-10-binary.tar.gz": Resource("cifar-10-binary.tar.gz",
                                           "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                                           "md5", "c32a1d4ab5d03f1284b67883e8d87530", 170052171),
    },
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}


def list_datasets():
    """The names ``get_dataset`` accepts."""
    return sorted(INFO)


def _canonical(name):
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in INFO:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return key


def dataset_info(name):
    """The DatasetInfo of the named dataset (channels, classes, image size, mean/std, class names)."""
    return INFO[_canonical(name)]


def get_dataset(name, root=None, train=True, download=True):
    """The training (or test) split of the named dataset as an ArrayDataset, images scaled to [0, 1].

    Files are looked for in ``root`` and ``root/<name>`` (or the cache folder
    ``<cache>/<name>`` when ``root`` is None); missing ones are downloaded into
    ``<root or cache>/<name>`` when ``download`` is true. ``digits`` comes
    with scikit-learn and ignores both.
    """
    key = _canonical(name)
    images, labels = _LOADERS[key](key, root, train, download)
    return ArrayDataset(images, labels, info=INFO[key])


# ---------------------------------------------------------------- the loaders


def _folders(key, root):
    base = cache_dir() if root is None else os.path.abspath(os.path.expanduser(os.fspath(root)))
    home = os.path.join(base, key)
    return ([base, home] if root is not None else [home]), home


def _missing(key, searched, filenames, alternative=""):
    return FileNotFoundError(
        f"{key}: files not found and download=False. Looked in {' and '.join(searched)} for: "
        f"{', '.join(filenames)}{alternative}. Put them there, or pass download=True.")


def _locate(key, root, filenames, download_ok):
    """The folder holding all of ``filenames``, downloading the missing ones into ``<base>/<key>`` if allowed."""
    searched, home = _folders(key, root)
    for folder in searched:
        if all(os.path.isfile(os.path.join(folder, f)) for f in filenames):
            return folder
    if not download_ok:
        raise _missing(key, searched, filenames)
    for f in filenames:
        if not os.path.isfile(os.path.join(home, f)):
            # if this fails, the message lists every file of the dataset still missing (this split's first):
            # minires train reads both splits, and copying by hand should take one trip
            names = list(filenames) + [g for g in RESOURCES[key] if g not in filenames]
            missing = [RESOURCES[key][g] for g in names if not os.path.isfile(os.path.join(home, g))]
            download(RESOURCES[key][f], home, mirror_path=f"{key}/{f}", needed=missing)
    return home


def _load_digits(key, root, train, download_ok):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the 'digits' dataset comes with scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = bunch.target.astype(np.int64)
    test = _digits_test_indices(labels)
    keep = np.zeros(len(labels), bool)
    keep[test] = True
    if train:
        keep = ~keep
    return images[keep], labels[keep]


def _digits_test_indices(labels, per_class=36, seed=0):
    """A fixed, stratified test split: ``per_class`` images of each digit, chosen with ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
    return np.sort(np.concatenate(picks))


def _load_idx(key, root, train, download_ok):
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    plain = [n[:-3] for n in names]  # files someone already gunzipped are fine too
    searched, _ = _folders(key, root)
    found = [f for f in searched if all(os.path.isfile(os.path.join(f, n)) for n in plain)]
    if found and not any(all(os.path.isfile(os.path.join(f, n)) for n in names) for f in searched):
        folder, names = found[0], plain
    else:
        folder = _locate(key, root, names, download_ok)
    paths = [os.path.join(folder, n) for n in names]
    images, labels = read_idx_pair(*paths, num_classes=INFO[key].num_classes)
    side = INFO[key].image_size
    if images.shape[1:] != (side, side):
        raise DataFormatError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, {key} images are "
                              f"{side}x{side}; the file is not the expected one")
    images = images.astype(np.float32)
    images /= 255.0
    return images[:, None], labels


_CIFAR_DIR = "cifar-10-batches-bin"
_CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch.bin"]
_CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"


def _load_cifar10(key, root, train, download_ok):
    names = _CIFAR_TRAIN if train else _CIFAR_TEST
    searched, home = _folders(key, root)
    folder = None
    for base in searched:  # the batch files, as extracted or loose
        for candidate in (os.path.join(base, _CIFAR_DIR), base):
            if all(os.path.isfile(os.path.join(candidate, n)) for n in names):
                folder = candidate
                break
        if folder:
            break
    if folder is None:  # extract them from the archive, downloading it first if need be
        try:
            archive_folder = _locate(key, root, [_CIFAR_ARCHIVE], download_ok)
        except FileNotFoundError:
            raise _missing(key, searched, [f"{_CIFAR_DIR}/{n}" for n in names],
                           f" (or the archive {_CIFAR_ARCHIVE})") from None
        archive = os.path.join(archive_folder, _CIFAR_ARCHIVE)
        safe_extract(archive, archive_folder)
        folder = os.path.join(archive_folder, _CIFAR_DIR)
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise FileNotFoundError(f"{archive} did not contain {_CIFAR_DIR}/{', '.join(missing)}")
    parts = [read_cifar10(os.path.join(folder, n)) for n in names]
    images = np.concatenate([p[0] for p in parts]).astype(np.float32)
    images /= 255.0
    return images, np.concatenate([p[1] for p in parts])


_LOADERS = {"digits": _load_digits, "mnist": _load_idx, "fashion-mnist": _load_idx, "cifar10": _load_cifar10}
