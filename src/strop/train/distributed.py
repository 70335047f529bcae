"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` launched by ``torchrun``.

``strop train CONFIG`` needs no change under ``torchrun --nproc_per_node=N -m strop train CONFIG``:
:func:`init_from_env` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group — ``nccl`` on CUDA,
``gloo`` on CPU — with a timeout, so a rank that hangs makes the others fail with a message
instead of waiting forever. Without those variables everything here is a no-op.

The timeout is ``STROP_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`). A rank that
*dies* is noticed sooner: torchrun sees its exit and stops the others, and gloo reports the
closed connection at the next collective. The timeout is for a rank that is alive but stuck
(a deadlock, a frozen machine, a network that drops packets).

The process group strop creates lives until the process exits, not until ``fit`` returns: a
script that calls ``fit`` twice under one torchrun launch reuses it (tearing a group down and
creating a new one on the same torchrun store is not reliable). A group the caller created
before ``fit`` is used as it is and never destroyed by strop.
"""

from __future__ import annotations

import atexit
import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from strop._checks import fail

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "init_from_env",
    "resolve_timeout",
    "wrap_model",
]

TIMEOUT_ENV = "STROP_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0

_owned_group = False  # True once init_from_env created the default group (destroyed at exit)


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


def resolve_timeout(timeout_s: float | None = None) -> float:
    """The collective timeout in seconds: ``timeout_s``, else ``$STROP_DIST_TIMEOUT``, else 300.

    Raises ``ValueError`` naming the source when the value is not a finite number > 0.
    """
    source = "timeout_s"
    value: object = timeout_s
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None or not raw.strip():
            return DEFAULT_TIMEOUT_S
        source = f"${TIMEOUT_ENV}"
        try:
            value = float(raw)
        except ValueError:
            fail("init_from_env", f"{source} must be a number of seconds > 0; got {raw!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(
            "init_from_env",
            f"{source} must be a number of seconds; got {type(value).__name__} {value!r}",
            exc=TypeError,
        )
    if not (math.isfinite(value) and value > 0):
        fail("init_from_env", f"{source} must be a finite number of seconds > 0; got {value!r}")
    return float(value)


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fail(
            "init_from_env",
            f"${name} must be an integer when WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}; got {raw!r}",
            hint="launch with torchrun (or strop train --nproc N), which sets RANK, LOCAL_RANK and WORLD_SIZE",
        )


def init_from_env(device: torch.device, *, timeout_s: float | None = None) -> DistContext:
    """Join the process group described by torchrun's environment, or return a 1-process context.

    ``device`` is the training device: CUDA selects ``nccl`` and this process's GPU
    (``LOCAL_RANK``); anything else selects ``gloo``. ``timeout_s`` (default: see
    :func:`resolve_timeout`) bounds every collective: a peer that stopped answering turns into an
    error on the others after that long (``TORCH_NCCL_ASYNC_ERROR_HANDLING`` is enabled for nccl
    so it is raised rather than left to hang). A default group that already exists (created by
    the caller, or by an earlier ``fit`` in this process) is reused, with its own backend.
    """
    global _owned_group
    world = _env_int("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world <= 1:
        return DistContext()
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    timeout = resolve_timeout(timeout_s)
    if dist.is_initialized():
        backend = str(dist.get_backend())
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local,
            backend=backend,
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        visible = torch.cuda.device_count()
        if local >= visible:
            fail(
                "init_from_env",
                f"LOCAL_RANK is {local} but only {visible} CUDA device(s) are visible",
                hint=f"launch at most {visible} process(es) per machine (--nproc_per_node / --nproc)",
            )
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local)
    kwargs: dict[str, object] = (
        {"device_id": torch.device("cuda", local)} if backend == "nccl" else {}
    )
    store = _restart_store(rank, world, datetime.timedelta(seconds=timeout))
    if store is not None:
        kwargs["store"] = store
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
        **kwargs,
    )
    if not _owned_group:
        atexit.register(_destroy_owned_group)
    _owned_group = True
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def _restart_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """After a torchrun restart, the rendezvous store under a prefix of this attempt; else None.

    torchrun's agent keeps one store for all attempts of a launch, and the process group's keys
    do not name the attempt: a restarted rank 0 can read the address a dead rank published in the
    previous attempt and fail with ``connectFullMesh ... Connection refused`` (seen on CPU/gloo,
    torch 2.14, under load). A prefix per ``TORCHELASTIC_RESTART_COUNT`` keeps attempts apart.
    """
    try:
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        return None
    if restarts <= 0 or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=timeout,
        multi_tenant=not agent,
    )
    return dist.PrefixStore(f"strop/attempt_{restarts}", store)


def _destroy_owned_group() -> None:
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def wrap_model(
    model: nn.Module,
    ctx: DistContext,
    *,
    device: torch.device,
    sync_batchnorm: bool = False,
    strategy: str = "ddp",
) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (SyncBatchNorm first when asked), or, with
    ``strategy="fsdp"``, ``model`` itself sharded in place by FSDP2 (:mod:`strop.train.fsdp`).

    DDP averages gradients over processes, so with equal per-process batches a step equals a
    one-process step on the global batch (BatchNorm aside: it normalises per process unless
    ``sync_batchnorm``). ``find_unused_parameters`` is on only when some parameters are frozen.
    One process: ``model`` unchanged, whatever the strategy.
    """
    if not ctx.enabled:
        return model
    if strategy == "fsdp":
        from strop.train.fsdp import shard_model

        return shard_model(model)
    if sync_batchnorm:
        from strop.finetune.freeze import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    ids = [ctx.local_rank] if device.type == "cuda" else None
    # frozen backbones leave parameters without gradients: DDP must not wait for them
    has_frozen = any(not p.requires_grad for p in model.parameters())
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=has_frozen
    )


def all_reduce_sum(t: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``t`` over all processes; returns a CPU tensor (``t`` itself when not distributed).

    nccl reduces on this process's GPU, gloo on the CPU; float64 totals stay float64.
    """
    if not ctx.enabled:
        return t
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else torch.device("cpu")
    buf = t.to(device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def barrier(ctx: DistContext) -> None:
    """Wait until every process gets here (no-op when not distributed); bounded by the timeout."""
    if ctx.enabled:
        dist.barrier()
