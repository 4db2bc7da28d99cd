"""Data: generated datasets (irregularly sampled noisy spirals)."""

from ._spirals import Spirals as Spirals
from ._spirals import make_spirals as make_spirals
from ._spirals import observation_mask as observation_mask
from ._spirals import sample_observation_indices as sample_observation_indices
