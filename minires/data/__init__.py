"""Data: datasets, the DataLoader, and batch transforms.

    from minires.data import DataLoader, get_dataset, Compose, RandomCrop, Normalize
    train = get_dataset("digits", train=True)
    info = train.info
    train.transform = Compose([RandomCrop(info.image_size, padding=1), Normalize(info.mean, info.std)])
    for images, labels in DataLoader(train, batch_size=64, shuffle=True, seed=0):
        ...
"""
from ..distributed import DistributedSampler
from .dataset import ArrayDataset, Dataset, DatasetInfo
from .datasets import dataset_info, get_dataset, list_datasets
from .download import DownloadError, cache_dir
from .formats import DataFormatError, read_cifar10, read_idx
from .loader import DataLoader
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["ArrayDataset", "Compose", "DataFormatError", "DataLoader", "Dataset", "DatasetInfo", "DistributedSampler", "DownloadError",
           "Normalize", "RandomCrop", "RandomHorizontalFlip", "cache_dir", "dataset_info", "get_dataset",
           "list_datasets", "read_cifar10", "read_idx"]
