"""The IDX (MNIST-format) loader: round trips, gzip, and clear errors for bad files."""

import gzip

import numpy as np
import pytest

from ode_jax.data import IDXDataError, load_idx_dataset, read_idx, write_idx


def write_dataset(folder, n_train=12, n_test=5, size=28, gz=True, seed=0):
    """Four small IDX files like MNIST's; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name + ".gz" if gz else name), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_roundtrip(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    data = load_idx_dataset(tmp_path)
    np.testing.assert_array_equal(data.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    assert data.test_images.shape == (5, 28, 28)


def test_missing_folder_and_file_say_how_to_get_data(tmp_path):
    with pytest.raises(IDXDataError, match="apt-get install -y dataset-fashion-mnist"):
        load_idx_dataset(tmp_path / "nowhere")
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IDXDataError, match="missing t10k-labels-idx1-ubyte.*apt-get"):
        load_idx_dataset(tmp_path)


def test_corrupt_files(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IDXDataError, match="bad magic number"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IDXDataError, match="dtype code 0x0d"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")  # truncated data
    with pytest.raises(IDXDataError, match=r"shape \(5,\).*holds 3"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    assert read_idx(path).tolist() == [97, 98, 99]
    with pytest.raises(IDXDataError, match="expected a 3-d IDX file"):
        read_idx(path, ndim=3)
    bad_gz = tmp_path / "y-idx1-ubyte.gz"
    bad_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")[:-9])
    with pytest.raises(IDXDataError, match="cannot read"):
        read_idx(bad_gz)


def test_inconsistent_splits(tmp_path):
    write_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(IDXDataError, match="12 images but train-labels-idx1-ubyte holds 11"):
        load_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(IDXDataError, match="labels go up to 10"):
        load_idx_dataset(tmp_path)
