"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` launched by ``torchrun``.

``strop train CONFIG`` needs no change under ``torchrun --nproc_per_node=N -m strop train CONFIG``:
:func:`init_from_env` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group — ``nccl`` on CUDA,
``gloo`` on CPU — with a timeout, so a rank that dies makes the others fail with a message
instead of hanging forever. Without those variables everything here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "all_reduce_sum", "broadcast_object", "init_from_env", "shutdown", "wrap_model"]


@dataclass(frozen=True)
class DistContext:
    """Who this process is. ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, plots and checkpoints."""
        return self.rank == 0


def init_from_env(device: torch.device, *, timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by torchrun's environment, or return a 1-process context.

    ``timeout_s`` bounds every collective: a peer that died turns into an error on the others
    after that long (``TORCH_NCCL_ASYNC_ERROR_HANDLING`` is enabled for nccl so it is raised).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def wrap_model(model: nn.Module, ctx: DistContext, *, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm first when asked)."""
    if not ctx.enabled:
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.local_rank] if device.type == "cuda" else None
    # frozen backbones leave parameters without gradients: DDP must not wait for them
    has_frozen = any(not p.requires_grad for p in model.parameters())
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=has_frozen)


def all_reduce_sum(t: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``t`` over all processes (float64 totals on CPU for gloo; device tensors for nccl)."""
    if not ctx.enabled:
        return t
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")
    buf = t.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def broadcast_object(obj: object, ctx: DistContext) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the early-stopping decision)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (safe to call when not distributed)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
