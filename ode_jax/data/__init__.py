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
from ._toy2d import KNOWN_DENSITY as KNOWN_DENSITY
from ._toy2d import POTENTIALS as POTENTIALS
from ._toy2d import TOY_DATASETS as TOY_DATASETS
from ._toy2d import potential as potential
from ._toy2d import potential_log_normalizer as potential_log_normalizer
from ._toy2d import sample_toy as sample_toy
from ._toy2d import toy_entropy as toy_entropy
from ._toy2d import toy_log_density as toy_log_density
