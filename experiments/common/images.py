"""Image classification data and scoring shared by the image experiments (odenet, nfe_study,
regularisation): MNIST-format splits with a validation hold-out, generated stand-in images for
``--smoke`` runs, crops, cross-entropy and batched evaluation."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ode_jax.data import IDXDataError, ImageDataset, load_idx_dataset

from .cli import UserError

DTYPE = jnp.float32
NUM_CLASSES = 10
STAND_IN = ""  # data_dir value meaning "generated stand-in images" (the --smoke default)


@functools.lru_cache(maxsize=2)
def stand_in_images(n_train: int = 320, n_test: int = 160, size: int = 28) -> ImageDataset:
    """A generated stand-in for an MNIST-format dataset (uint8, 10 classes) so that smoke runs
    need no download: class k is a bright 6x6 square at the k-th of ten positions, jittered by
    up to 2 pixels, on uniform noise. Learnable, and meaningless as a benchmark."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
        images = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
        for i, k in enumerate(labels):
            r = 3 + 9 * (k // 4) + rng.integers(-2, 3)
            c = 3 + 6 * (k % 4) + rng.integers(-2, 3)
            images[i, r : r + 6, c : c + 6] = 255
        return images, labels

    return ImageDataset(*make(n_train), *make(n_test))


def load_splits(data_dir: str, val_size: int):
    """``{"train", "val", "test"}``: (images uint8 (N, H, W, 1), labels int32 (N,)).

    ``data_dir`` holds the four MNIST-format IDX files, or is ``""`` for
    :func:`stand_in_images`. The validation split is a fixed (seed 0) random subset of the
    training files. A missing or broken folder is a :class:`UserError` that says how to fix it.
    """
    if data_dir == STAND_IN:
        data = stand_in_images()
    else:
        try:
            data = load_idx_dataset(data_dir, NUM_CLASSES)
        except IDXDataError as e:
            raise UserError(
                f"--data-dir: {e} (or pass --smoke for generated stand-in images)"
            ) from None
    n = len(data.train_images)
    if not 0 < val_size < n:
        raise UserError(f"--val-size {val_size} must be in (0, {n}) for the data in {data_dir!r}")
    order = np.random.default_rng(0).permutation(n)
    val, train = order[:val_size], order[val_size:]
    x, y = data.train_images[..., None], data.train_labels
    return {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (data.test_images[..., None], data.test_labels),
    }


def describe_data(data_dir: str) -> str:
    if data_dir == STAND_IN:
        return "data: generated stand-in images (no dataset needed; the numbers mean nothing)"
    return f"data: {data_dir}"


def to_float(images_uint8):
    return images_uint8.astype(DTYPE) / 255.0


def random_crop(key, images, padding: int):
    """Each image shifted by up to ``padding`` pixels (zero fill): pad, then crop back."""
    if padding == 0:
        return images
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def cross_entropy(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def is_correct(logits_NK, labels_N):
    """Whether the top class is the label: (N,) bool (argmax's int in the labels' dtype)."""
    labels_N = jnp.asarray(labels_N)
    return jnp.argmax(logits_NK, -1).astype(labels_N.dtype) == labels_N


@eqx.filter_jit
def _eval_batch(model, images, labels):
    logits, stats = model(to_float(images))
    wrong = jnp.sum(~is_correct(logits, labels))
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return wrong, loss, stats["nfe"]


def evaluate_split(model, images, labels, batch: int) -> dict:
    """Error rate, mean loss and mean forward NFE of ``model(x) -> (logits, {"nfe"})`` over a
    split, in batches of ``batch``."""
    wrong = loss = nfe = 0.0
    starts = range(0, len(images), batch)
    for s in starts:  # the last, smaller batch compiles once more
        w, lo, n = _eval_batch(model, images[s : s + batch], labels[s : s + batch])
        wrong, loss, nfe = wrong + float(w), loss + float(lo), nfe + float(n)
    return {"error": wrong / len(images), "loss": loss / len(images), "nfe": nfe / len(starts)}
