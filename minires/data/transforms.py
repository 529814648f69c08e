"""Batch transforms: each takes a whole batch (N, C, H, W) and a numpy Generator, and works on it in one step.

A random transform draws its numbers from the generator it is given (the
DataLoader passes its own), so a seeded loader gives the same augmented
batches every run; with no generator it uses ``minires.rng.generator()``.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import rng as _rng


def _check_batch(images, who):
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise ValueError(f"{who}: expected a batch of images (N, C, H, W), got "
                         f"{type(images).__name__} of shape {shape}")


def _crop_size(size, who):
    size = (size, size) if np.isscalar(size) else tuple(size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{who}: size must be a positive int or (height, width), got {size}")
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms one after another, each with the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, images, rng=None):
        rng = _rng.generator() if rng is None else rng
        for t in self.transforms:
            images = t(images, rng)
        return images

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class RandomCrop:
    """Zero-pad each side by ``padding`` and cut a ``size`` crop at a random offset, drawn per image.

    ``RandomCrop(32, padding=4)`` is the CIFAR augmentation of He et al. (2016).
    """

    def __init__(self, size, padding=0):
        self.size = _crop_size(size, "RandomCrop")
        if int(padding) != padding or padding < 0:
            raise ValueError(f"RandomCrop: padding must be a non-negative int, got {padding}")
        self.padding = int(padding)

    def __call__(self, images, rng=None):
        _check_batch(images, "RandomCrop")
        rng = _rng.generator() if rng is None else rng
        n, _, h, w = images.shape
        p, (ch, cw) = self.padding, self.size
        if ch > h + 2 * p or cw > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {ch}x{cw} is larger than the padded image "
                             f"{h + 2 * p}x{w + 2 * p} (input shape {images.shape})")
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p))) if p else images
        top = rng.integers(0, h + 2 * p - ch + 1, size=n)
        left = rng.integers(0, w + 2 * p - cw + 1, size=n)
        # windows[i, c, y, x] is the (ch, cw) crop of image i, channel c, whose corner is (y, x)
        windows = sliding_window_view(padded, (ch, cw), axis=(2, 3))
        return np.ascontiguousarray(windows[np.arange(n), :, top, left])

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``, decided per image."""

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must lie in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, images, rng=None):
        _check_batch(images, "RandomHorizontalFlip")
        rng = _rng.generator() if rng is None else rng
        flip = rng.random(images.shape[0]) < self.p
        return np.where(flip[:, None, None, None], images[..., ::-1], images)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Per channel ``(x - mean[c]) / std[c]``; deterministic."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: {self.mean.size} means but {self.std.size} stds")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")

    def __call__(self, images, rng=None):
        _check_batch(images, "Normalize")
        if images.shape[1] != self.mean.size:
            raise ValueError(f"Normalize: expected {self.mean.size} channels, got {images.shape[1]} "
                             f"(input shape {images.shape})")
        shape = (1, -1, 1, 1)
        return ((images - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32, copy=False)

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"
