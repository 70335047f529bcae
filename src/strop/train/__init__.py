"""Training: config, loop, checkpoints, callbacks and ``fit``.

from strop.train import fit, load_config
result = fit(load_config("configs/digits-finetune.yaml"))
"""

from strop.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from strop.train.config import Config, apply_overrides, config_from_dict, load_config
from strop.train.loop import NonFiniteLossError, TrainState, evaluate, train_one_epoch
from strop.train.setup import Run, build_run
from strop.train.trainer import RunResult, fit

__all__ = [
    "CheckpointError",
    "Config",
    "NonFiniteLossError",
    "Run",
    "RunResult",
    "TrainState",
    "apply_overrides",
    "build_run",
    "config_from_dict",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train_one_epoch",
]
