"""``strategy: fsdp``: the model sharded with FSDP2 (``fully_shard``), checkpoints with DCP.

Each process holds 1/N of every parameter, gradient and optimizer state; a layer's parameters are
all-gathered for its forward and backward and the gradients reduce-scattered back. The training
maths is DDP's: every rank's gradient is averaged, so a step equals the DDP step up to float
rounding.

Checkpoints (``torch.distributed.checkpoint``):

- ``checkpoints/last.pt`` stays a small ordinary strop checkpoint: the train state, RNG,
  scheduler, scaler, early stopping, sampler and the run's metadata, plus ``"sharded"``: the name
  of a sibling folder ``last-shards-<step>-<token>/`` where every rank wrote its shard of the model
  and the optimizer (DCP's ``__<rank>_0.distcp`` files and ``.metadata``).
- Atomic like the other checkpoints: the shards go to ``<folder>.tmp``, which rank 0 renames
  once every rank has written, then ``last.pt`` is replaced (``os.replace``) to name it, and only
  then are older shard folders removed. Whatever dies when, ``last.pt`` names a complete folder.
- ``best.pt`` holds the full (gathered) model, as on DDP; at the end of a run the full model is
  also written into ``last.pt`` (beside the shard reference that resume uses), so ``strop eval /
  predict / export`` read an fsdp run like any other. A mid-run ``last.pt`` has no ``"model"``;
  those commands then refuse it with one line (:func:`require_full_model`).

One process (no process group) with ``strategy: fsdp`` trains the plain model, exactly as
``ddp`` does on one process (nothing to shard); the log and ``run.json`` say so.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from strop._checks import fail
from strop.train.checkpoint import CheckpointError, save_checkpoint

__all__ = [
    "MIN_SHARD_PARAMS",
    "SHARDS_PREFIX",
    "check_fsdp_config",
    "full_model_state",
    "load_sharded",
    "param_names",
    "rebind_optimizer",
    "require_full_model",
    "save_sharded",
    "shard_model",
    "sharded_finite",
    "stateful_rest",
]

#: a submodule holding at least this many parameters (outside already-sharded submodules) gets
#: its own FSDP group: its parameters are gathered just for its forward/backward
MIN_SHARD_PARAMS = 100_000
SHARDS_PREFIX = "last-shards-"

# config keys whose fsdp path is not built or not tested: refused when the config is read
_REFUSED = (
    ("ema", lambda c: c.ema is not None, "the EMA copy would be a sharded module"),
    ("swa", lambda c: c.swa is not None, "the SWA copy would be a sharded module"),
    (
        "compile",
        lambda c: c.compile is not False,
        "torch.compile of an FSDP2 module is not tested here",
    ),
    (
        "gradual_unfreeze",
        lambda c: c.gradual_unfreeze is not None,
        "it adds optimizer param groups of sharded parameters mid-run",
    ),
    (
        "sync_batchnorm",
        lambda c: c.sync_batchnorm,
        "SyncBatchNorm under fully_shard is not tested here",
    ),
    ("task", lambda c: c.task == "detection", "detection models are not tested under fully_shard"),
    (
        "precision",
        lambda c: c.precision == "fp16",
        "fp16's GradScaler would need FSDP's sharded scaler; use bf16 or fp32",
    ),
)


def check_fsdp_config(config: Any) -> None:
    """Refuse keys that do not go with ``strategy: fsdp`` (one line naming the key and why)."""
    if getattr(config, "strategy", "ddp") != "fsdp":
        return
    for key, bad, why in _REFUSED:
        if bad(config):
            fail(
                "config",
                f"{key}={getattr(config, key)!r} does not go with strategy: fsdp ({why})",
                hint="use strategy: ddp for this run",
            )


def shard_model(model: nn.Module, *, min_params: int = MIN_SHARD_PARAMS) -> nn.Module:
    """``fully_shard`` in place, bottom-up: each submodule with ``>= min_params`` parameters not
    in an already sharded descendant gets its own group, then the root takes the rest."""
    from torch.distributed.fsdp import fully_shard

    def visit(module: nn.Module) -> int:
        inner = sum(visit(child) for child in module.children())
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = inner + own
        if module is not model and total >= min_params:
            fully_shard(module)
            return 0
        return total

    visit(model)
    fully_shard(model)
    return model


def rebind_optimizer(
    optimizer: torch.optim.Optimizer, names: dict[int, str], model: nn.Module
) -> torch.optim.Optimizer:
    """A new optimizer like ``optimizer`` (same class, defaults and param groups, no state) over
    ``model``'s parameters after ``fully_shard`` replaced them; ``names``: ``id(old param) ->
    name`` taken before (:func:`param_names`)."""
    new = dict(model.named_parameters())
    # DTensor has no sharding rule for the fused kernels (aten._fused_sgd_ raised
    # NotImplementedError, torch 2.14): the same maths with the multi-tensor (foreach) kernels
    no_fused = {"fused": False, "foreach": True} if optimizer.defaults.get("fused") else {}
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            **no_fused,
            "params": [new[names[id(p)]] for p in g["params"]],
        }
        for g in optimizer.param_groups
    ]
    return type(optimizer)(groups, **{**optimizer.defaults, **no_fused})


def param_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` (to find each parameter again after sharding)."""
    return {id(p): n for n, p in model.named_parameters()}


def sharded_finite(model: nn.Module, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Every floating value of ``model`` finite on every rank (each checks its own shards)."""
    bad = 0.0
    for t in model.state_dict().values():
        local = t.to_local() if hasattr(t, "to_local") else t
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            bad = 1.0
            break
    return float(all_reduce(torch.tensor([bad], dtype=torch.float64)).item()) == 0.0


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (CPU), ``{}`` on the others; every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def _broadcast(value: Any) -> Any:
    box = [value]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    payload: dict[str, Any],
    last: Path,
    *,
    rank: int,
    full_model: bool = False,
) -> Path:
    """Every rank writes its shards of ``model`` + ``optimizer``; rank 0 then points ``last``
    (with ``payload``: everything else) at them. See the module doc for why it is atomic.

    ``full_model``: also gather the whole model into ``last`` (the end of a run)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = last.parent
    name = _broadcast(
        f"{SHARDS_PREFIX}{payload['state']['step']:08d}-{secrets.token_hex(4)}"
        if rank == 0
        else None
    )
    tmp = folder / f"{name}.tmp"
    failure: list[Any] = [None]
    if rank == 0:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as exc:
            failure = [f"{type(exc).__name__}: {exc}"]
    failure = _broadcast(failure)  # every rank stops together, nobody waits in dcp.save
    if failure[0] is not None:
        raise CheckpointError(
            f"could not write checkpoint {last}: {failure[0]}; the previous "
            "checkpoint there (if any) is kept"
        )
    msd, osd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=tmp)
    except Exception as exc:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write the shards of checkpoint {last} to {tmp}: "
            f"{exc}; the previous checkpoint there (if any) is kept"
        ) from exc
    full = full_model_state(model) if full_model else None
    if rank == 0:
        _point_last_at(folder, name, last, {**payload, **({} if full is None else {"model": full})})
    return last


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (skipped where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point_last_at(folder: Path, name: str, last: Path, payload: dict[str, Any]) -> None:
    """Rank 0: rename the written shards into place, replace ``last`` to name them, prune."""
    tmp = folder / f"{name}.tmp"
    try:
        os.replace(tmp, folder / name)  # every rank has written (dcp.save ends in a collective)
        _fsync_folder(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {last}: {exc.strerror or exc}; the "
            "previous checkpoint there (if any) is kept"
        ) from exc
    world = dist.get_world_size() if dist.is_initialized() else 1
    try:
        save_checkpoint({**payload, "sharded": {"folder": name, "world_size": world}}, last)
    except CheckpointError:
        shutil.rmtree(folder / name, ignore_errors=True)  # last.pt still names the old folder
        raise
    for old in folder.glob(f"{SHARDS_PREFIX}*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict[str, Any], last: Path
) -> None:
    """Load the shard folder ``checkpoint["sharded"]`` names into ``model`` and ``optimizer`` in
    place (DCP reshards: the world size may differ from the one that saved it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = last.parent / checkpoint["sharded"]["folder"]
    if not (folder / ".metadata").is_file():
        raise CheckpointError(
            f"could not read checkpoint {last}: its model and optimizer shards are in {folder}, "
            "which is missing or incomplete (copy the whole checkpoints/ folder, not one file)"
        )
    msd, osd = get_state_dict(model, optimizer)
    target = {"model": msd, "optimizer": osd}
    # one process without a group (a resume on fewer processes) reads every shard itself; DCP
    # warns that it assumes so even when told (no_dist=True): that is the intent here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, checkpoint_id=folder, no_dist=not dist.is_initialized())
    set_state_dict(
        model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"]
    )


def require_full_model(checkpoint: dict[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    """``checkpoint["model"]``, or one clear line for a mid-run fsdp ``last.pt`` (shards only)."""
    if "model" in checkpoint:
        return checkpoint["model"]
    if "sharded" in checkpoint:
        raise CheckpointError(
            f"{path} is a mid-run fsdp checkpoint: its model is sharded in "
            f"{checkpoint['sharded']['folder']}/ (for --resume only); use best.pt, or last.pt "
            "once the run has finished (it then holds the full model)"
        )
    raise CheckpointError(f"{path} holds no model weights")


def stateful_rest(objects: dict[str, Any]) -> dict[str, Any]:
    """``objects`` without the model and optimizer (DCP saves those)."""
    return {k: v for k, v in objects.items() if k not in ("model", "optimizer")}
