"""Data: MNIST-format IDX image files, generated datasets (irregularly sampled noisy spirals)."""

from ._idx import DEFAULT_IDX_DIR as DEFAULT_IDX_DIR
from ._idx import IDXDataError as IDXDataError
from ._idx import ImageDataset as ImageDataset
from ._idx import load_idx_dataset as load_idx_dataset
from ._idx import read_idx as read_idx
from ._idx import write_idx as write_idx
from ._spirals import Spirals as Spirals
from ._spirals import make_spirals as make_spirals
from ._spirals import observation_mask as observation_mask
from ._spirals import sample_observation_indices as sample_observation_indices
