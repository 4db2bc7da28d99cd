"""MNIST-format IDX files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in one folder.

The IDX format (LeCun's MNIST page): a big-endian header ``0x00 0x00 <dtype> <ndim>``, then
``ndim`` big-endian uint32 sizes, then the data. Images are ``ndim=3`` uint8 (N, rows, cols),
labels ``ndim=1`` uint8 (N,). MNIST and Fashion-MNIST share the format and the file names.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package

_HOW_TO_GET = (
    "Fashion-MNIST: `apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; "
    f"files under {DEFAULT_IDX_DIR}); MNIST or Fashion-MNIST: put the four files "
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (optionally .gz) in one folder and pass that folder"
)
_DTYPE_CODES = {0x08: np.uint8}  # the only dtype MNIST-format files use
_MAX_ELEMENTS = 1 << 34  # a header asking for more is corrupt, not big data


class IDXDataError(ValueError):
    """A missing, unreadable or inconsistent IDX file."""


class ImageDataset(NamedTuple):
    """Images as uint8 ``(N, H, W)`` and labels as int32 ``(N,)``, for train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzipped) and check its header against its contents.

    Args:
        path: the file.
        ndim: the number of dimensions the file must have (None: any).

    Returns: the array, with the shape its header declares.

    Raises: IDXDataError naming the file when the magic number, dtype, rank or size is wrong.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as e:  # includes a truncated or not-really-gzip file
        raise IDXDataError(f"{path}: cannot read ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXDataError(f"{path}: not an IDX file (bad magic number {data[:4].hex()!r})")
    code, rank = data[2], data[3]
    if code not in _DTYPE_CODES:
        raise IDXDataError(f"{path}: unsupported IDX dtype code 0x{code:02x} (expected 0x08)")
    if ndim is not None and rank != ndim:
        raise IDXDataError(f"{path}: expected a {ndim}-d IDX file, its header says {rank}-d")
    header = 4 + 4 * rank
    if len(data) < header:
        raise IDXDataError(f"{path}: truncated header")
    shape = struct.unpack(f">{rank}I", data[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if size > _MAX_ELEMENTS:
        raise IDXDataError(f"{path}: header declares an implausible shape {shape}")
    if len(data) - header != size:
        raise IDXDataError(
            f"{path}: header declares shape {shape} ({size} bytes of data) but the file holds "
            f"{len(data) - header}"
        )
    return np.frombuffer(data, _DTYPE_CODES[code], size, header).reshape(shape)


def write_idx(path, array: np.ndarray):
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in .gz); for tests."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx writes uint8 arrays, got {array.dtype}")
    blob = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    path = Path(path)
    with gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb") as f:
        f.write(blob)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise IDXDataError(f"{folder}: missing {stem}[.gz]. To get the data: {_HOW_TO_GET}")


def _load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find(folder, f"{split}-images-idx3-ubyte")
    labels_path = _find(folder, f"{split}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise IDXDataError(
            f"{folder}: {images_path.name} holds {len(images)} images but "
            f"{labels_path.name} holds {len(labels)} labels"
        )
    return images, labels.astype(np.int32)


def load_idx_dataset(folder=DEFAULT_IDX_DIR, num_classes: int = 10) -> ImageDataset:
    """Load the train and test splits of an MNIST-format dataset from ``folder``.

    Args:
        folder: holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.
            Default: Fashion-MNIST as installed by Debian's ``dataset-fashion-mnist``.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns: an :class:`ImageDataset` (uint8 images (N, H, W), int32 labels (N,)).

    Raises: IDXDataError with instructions when the folder or a file is missing, and naming
        the file when one is corrupt or the splits disagree.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IDXDataError(f"no data folder {folder}. To get the data: {_HOW_TO_GET}")
    train, test = _load_split(folder, "train"), _load_split(folder, "t10k")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise IDXDataError(
            f"{folder}: train images are {train[0].shape[1:]} but test images are "
            f"{test[0].shape[1:]}"
        )
    for split, labels in (("train", train[1]), ("t10k", test[1])):
        if labels.size and labels.max() >= num_classes:
            raise IDXDataError(
                f"{folder}: {split} labels go up to {labels.max()}, expected < {num_classes}"
            )
    return ImageDataset(*train, *test)
