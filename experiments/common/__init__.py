"""The experiment harness shared by every experiment script."""

from .cli import config_from_dict as config_from_dict
from .cli import parse_config as parse_config
from .loop import Task as Task
from .loop import TrainResult as TrainResult
from .loop import train as train
from .run import main as main
