"""Datasets: the base class, ArrayDataset (the whole set as two arrays), and the metadata a model needs."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and its transforms need to know about a dataset; mean/std are per channel on [0, 1] pixels."""

    name: str
    in_channels: int
    num_classes: int
    image_size: int  # images are image_size x image_size
    mean: tuple
    std: tuple
    classes: tuple
    train_size: int
    test_size: int
    source: str = ""

    @property
    def shape(self):
        """(C, H, W) of one image."""
        return (self.in_channels, self.image_size, self.image_size)


class Dataset:
    """A sized collection of (image float32 (C, H, W), int label) pairs, read with ``dataset[i]``.

    A subclass that can fetch many items at once defines ``batch(indices)``
    returning untransformed (images, labels) arrays; the DataLoader then uses it
    and applies the dataset's ``transform`` to the whole batch.
    """

    transform = None
    info = None

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class ArrayDataset(Dataset):
    """A dataset held as arrays: images (N, C, H, W) float32 and labels (N,) int64.

    ``transform`` is a batch transform (see ``minires.data.transforms``); the
    DataLoader applies it to each batch with its own generator.
    """

    def __init__(self, images, labels, transform=None, info=None):
        images = np.ascontiguousarray(images, dtype=np.float32)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"ArrayDataset: expected images of shape (N, C, H, W), got shape {images.shape}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"ArrayDataset: expected integer labels of shape (N,), got {labels.dtype} "
                             f"of shape {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"ArrayDataset: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.astype(np.int64)
        self.transform, self.info = transform, info

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        """(image (C, H, W), label), transformed as a batch of one with the global generator."""
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image[None])[0]
        return image, int(self.labels[index])

    def batch(self, indices):
        """Untransformed (images (B, C, H, W), labels (B,)) for ``indices``, in one fancy-indexing step."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.images[indices], self.labels[indices]

    def __repr__(self):
        name = f"{self.info.name}, " if self.info is not None else ""
        return (f"ArrayDataset({name}{len(self)} images of shape {self.images.shape[1:]}, "
                f"transform={self.transform!r})")
