"""Data: Fashion-MNIST, MNIST, CIFAR-10 and image folders loaded whole, and the device-resident batch loader.

``load_dataset(name, split)`` -> :class:`ImageDataset` (uint8 tensors on CPU, plus where they came from);
``DeviceLoader(dataset, batch_size, device=...)`` -> (x, y) batches made on the device.
"""

from .base import DataError, ImageDataset
from .datasets import DATASETS, ENV_VAR, default_data_dir, load_dataset, load_sample, load_splits
from .folder import load_image_folder
from .idx import read_idx, write_idx
from .loader import DeviceLoader, augment_batch, resize_batch
from .provenance import check_provenance, provenance

__all__ = ["DataError", "ImageDataset", "DATASETS", "ENV_VAR", "default_data_dir", "load_dataset", "load_splits", "load_sample",
           "load_image_folder", "read_idx", "write_idx", "DeviceLoader", "augment_batch", "resize_batch", "provenance",
           "check_provenance"]
