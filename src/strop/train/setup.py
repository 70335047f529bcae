"""Everything a run is built from, built once: :class:`Run` and :func:`build_run`.

``build_run`` reads in order: data (rank 0 first), the task, the sampler and step counts, model
+ loss + optimizer, unfreezing plan, schedule, precision, early stopping, what actually trains
(the feature-cached head, DDP, ``torch.compile``), the loaders, and the choices for ``run.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from strop import __version__
from strop.train import callbacks as cb
from strop.train import fsdp
from strop.train.checkpoint import forget_shared
from strop.train.config import Config
from strop.train.distributed import DistContext, barrier, wrap_model
from strop.train.feature_cache import TensorBatches, cache_decision, extract_features
from strop.train.metrics import check_monitor
from strop.train.recipe_run import attach as attach_recipe
from strop.train.recipe_run import build_train_sampler, loss_spec
from strop.train.rundir import RunDir
from strop.train.sampler import ResumableSampler
from strop.train.state import UnfreezeProgress
from strop.train.tasks import Task, build_task

__all__ = [
    "Run",
    "build_parts",
    "build_run",
    "build_schedule",
    "load_datasets",
    "resolve_device",
    "training_batches",
    "val_batch_size",
]


@dataclass
class Run:
    """The built parts of a run. ``model`` is what checkpoints hold; ``module`` is what the loop
    calls (the same model, or it wrapped in DDP / compiled, or its head alone on cached features)."""

    config: Config
    ctx: DistContext
    device: torch.device
    memory_format: torch.memory_format
    task: Task
    model: nn.Module
    module: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    amp: Any  # strop.precision.MixedPrecision
    schedule: Any | None  # strop.schedules.StropScheduler
    unfreeze: UnfreezeProgress | None
    early: cb.EarlyStopping | None
    sampler: ResumableSampler
    loader: Any
    val_loader: Any
    batches_per_epoch: int
    steps_per_epoch: int
    classes: list[str] | None
    paths: RunDir
    choices: dict[str, Any] = field(default_factory=dict)
    # model state keys that never change (the frozen backbone under the feature cache): stored
    # once beside the checkpoints and referenced by hash (strop.train.checkpoint)
    frozen_keys: frozenset[str] | None = None
    ema: Any | None = None  # strop.train.recipe_run.AveragedWeights
    swa: Any | None = None  # strop.train.swa.SWA
    mixer: Any | None = None  # strop.data.mixing.BatchMix
    val_images: Any | None = None  # the validation images (diagnostics), also with cached features
    # the feature cache's validation features (TensorDataset of the head's inputs): the end-of-fit
    # diagnostics run the head on them instead of the frozen backbone again
    val_features: Any | None = None

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def sharded(self) -> bool:
        """FSDP2 shards the model over the processes (``strategy: fsdp`` on more than one)."""
        return self.config.strategy == "fsdp" and self.ctx.enabled

    def to_device(self, batch: Any) -> Any:
        """``batch`` on the run's device (images in its memory format), as the task moves it."""
        return self.task.to_device(batch, self.device, self.memory_format)

    def stateful(self, state: Any) -> dict[str, Any]:
        """The named objects a checkpoint saves, in the order they are restored."""
        return {
            "state": state,
            "unfreeze": self.unfreeze,
            "model": self.model,
            "swa": self.swa,  # before the optimizer: a restored SWALR sets LRs the optimizer then restores
            "optimizer": self.optimizer,
            "scheduler": self.schedule,
            "amp": self.amp,
            "early_stopping": self.early,
            "ema": self.ema,
            "mixer": self.mixer,
            "sampler": self.sampler if hasattr(self.sampler, "state_dict") else None,
        }

    def metadata(self) -> dict[str, Any]:
        """What every checkpoint says about the run besides its state."""
        return {
            "config": self.config.to_dict(),
            "classes": self.classes,
            "num_classes": self.num_classes,
            "strop_version": __version__,
            **self.task.metadata(self.model),
        }


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``name`` checked."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"config: device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r} ({exc})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: 'cuda' was asked for but torch.cuda.is_available() is False; got {name!r}"
        )
    return device


def load_datasets(config: Config) -> tuple[Any, Any, list[str] | None, int]:
    """``(train_ds, val_ds, classes, num_classes)``, with num_classes checked against the config."""
    from strop import data as sdata
    from strop.data.roots import resolve_root

    d = config.data
    if d.root is None:
        raise ValueError(
            "config: data.root is required (a folder of images, or bundled:digits / bundled:shapes); got null"
        )
    common = dict(
        image_size=d.image_size,
        val_fraction=d.val_fraction,
        seed=config.seed,
        augment=d.augment,
        strict=d.strict,
        cache=None if d.cache == "none" else d.cache,
        val_folder=d.val_folder,
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        random_erasing=d.random_erasing,
    )
    root = resolve_root(d.root)
    classes: list[str] | None = None
    if config.task == "detection":
        from strop.train.detection_run import detection_datasets

        train_ds, val_ds, classes, n = detection_datasets(config)
    elif config.task == "classification":
        train_ds, val_ds, classes = sdata.image_folder(root, **common)
        n = len(classes)
    else:
        train_ds, val_ds, n = sdata.segmentation_folder(
            root, num_classes=d.num_classes, ignore_index=d.ignore_index, **common
        )
    if d.num_classes is not None and d.num_classes != n:
        raise ValueError(
            f"config: data.num_classes is {d.num_classes} but {d.root} holds {n} classes"
            + (f" ({', '.join(classes)})" if classes else "")
        )
    if len(train_ds) == 0:
        raise ValueError(f"config: no training images found under {d.root}")
    if len(val_ds) == 0:
        raise ValueError(
            f"config: no validation images under {d.root} (data.val_fraction is {d.val_fraction} and there is "
            "no val/ folder); best.pt, early stopping and plateau schedules need a validation set"
        )
    return train_ds, val_ds, classes, n


def build_parts(
    config: Config, num_classes: int, train_ds: Any = None
) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
    """``(model, loss_fn, optimizer)`` from the config (no schedule: it needs the loader size);
    ``train_ds`` counts the classes for ``loss weight: auto``."""
    from strop import finetune, losses

    if config.task == "detection":
        from strop.train.detection_run import build_detection_parts

        return build_detection_parts(config, num_classes)
    m = config.model
    model = finetune.build_model(
        m.name,
        num_classes=build_task(config.task, num_classes).out_channels,
        weights=m.weights,
        freeze=m.freeze,
        train_bn=m.train_bn,
        strict=m.strict,
        sha256=m.sha256,
        trust_pickle=m.trust_pickle,
        keep_head=m.keep_head,
    )
    for mod in model.modules():
        if m.dropout is not None and isinstance(mod, nn.Dropout):
            mod.p = m.dropout
        # torchvision's MobileNetV3 uses momentum 0.01: running stats lag far behind short runs
        if m.bn_momentum is not None and isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = m.bn_momentum
    if config.gradual_unfreeze is not None:
        # the head-only phase starts now, so the optimizer's first groups hold the head alone and the
        # plan adds the backbone at lr × lr_mult when it unfreezes it
        unfreeze_plan(config).on_epoch_start(0, model)
    return model, losses.build(loss_spec(config, train_ds)), build_optimizer(config, model)


def unfreeze_plan(config: Config) -> Any:
    """The config's ``GradualUnfreezing`` (None without ``gradual_unfreeze``)."""
    from strop import finetune

    g = config.gradual_unfreeze
    if g is None:
        return None
    return finetune.GradualUnfreezing(
        head_epochs=g.head_epochs, lr_mult=g.lr_mult, train_bn=config.model.train_bn
    )


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The config's ``torch.optim`` optimizer by name (:func:`strop.optim.build_optimizer`) over
    ``finetune.param_groups`` (head LR multiplier, layer decay, no decay on norms/biases)."""
    from strop import finetune, optim

    o = config.optimizer
    lr = o.lr
    if config.scale_lr:
        # linear scaling rule (Goyal et al. 2017): lr is given for a global batch of 256
        lr = lr * config.data.batch_size * config.accumulation_steps / 256
    groups = finetune.param_groups(
        model,
        lr,
        head_lr_mult=o.head_lr_mult,
        layer_decay=o.layer_decay,
        weight_decay=o.weight_decay,
    )
    return optim.build_optimizer(
        o.name,
        groups,
        lr=lr,
        weight_decay=o.weight_decay,
        implementation=o.implementation,
        **o.options(),
    )


def build_schedule(config: Config, optimizer: Any, steps_per_epoch: int) -> Any:
    """The config's LR schedule (None without one); a plateau schedule follows the monitor's
    direction.

    torch's ``ReduceLROnPlateau`` defaults to ``mode="min"``: fed the default monitor
    ``val_accuracy`` it would cut the LR while accuracy improves.
    """
    from strop import schedules
    from strop.schedules.scheduler import SCHEDULES

    spec = config.schedule
    if spec is None:
        return None
    name, options = (spec, {}) if isinstance(spec, str) else (spec.get("name"), dict(spec))
    extra: dict[str, Any] = {}
    if name in SCHEDULES and SCHEDULES.canonical(name) == "ReduceLROnPlateau":
        mode = options.get("mode")
        if mode is None:
            extra["mode"] = config.monitor_direction
        elif mode != config.monitor_direction:
            raise ValueError(
                f"config: schedule {name!r} has mode={mode!r} but monitor {config.monitor_metric!r} is "
                f"better when {'higher' if config.monitor_direction == 'max' else 'lower'}; drop schedule.mode "
                "(it follows the monitor) or set monitor_mode"
            )
    return schedules.build(
        spec, optimizer, epochs=config.epochs, steps_per_epoch=steps_per_epoch, **extra
    )


def _data(config: Config, ctx: DistContext) -> tuple[Any, Any, list[str] | None, Task]:
    # rank 0 first: bundled data (and a disk sample cache) is written once, then read by the others
    if not ctx.is_main:
        barrier(ctx)
    train_ds, val_ds, classes, num_classes = load_datasets(config)
    task = build_task(config.task, num_classes, classes)
    check_monitor(config.monitor_metric, task.metric_names())
    if ctx.is_main:
        barrier(ctx)
    if config.data.batch_size % ctx.world_size:
        raise ValueError(
            f"config: data.batch_size ({config.data.batch_size}) is the global batch and must be divisible "
            f"by the number of processes ({ctx.world_size})"
        )
    return train_ds, val_ds, classes, task


def _choices(run: Run, precision: Any, per_rank_batch: int) -> dict[str, Any]:
    params = list(run.model.parameters())
    return {
        "device": str(run.device),
        "precision": precision.name,
        "precision_reason": precision.reason,
        "memory_format": str(run.memory_format).replace("torch.", ""),
        "world_size": run.ctx.world_size,
        "backend": run.ctx.backend,
        "per_process_batch": per_rank_batch,
        "per_process_val_batch": val_batch_size(run.config, run.ctx.world_size),
        "steps_per_epoch": run.steps_per_epoch,
        "compile": False,
        "feature_cache": False,
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
        "torch": torch.__version__,
        "strop": __version__,
    }


def build_run(
    config: Config, ctx: DistContext, device: torch.device, log: Callable[[str], None]
) -> Run:
    """Build every part of the run ``config`` describes, for this process (see the module doc)."""
    from strop.finetune.build import load_summary
    from strop.precision import (
        MixedPrecision,
        convolutions_frozen,
        resolve,
        resolve_memory_format,
    )
    from strop.train.autocompile import maybe_compile

    precision = resolve(config.precision, device)
    train_ds, val_ds, classes, task = _data(config, ctx)
    per_rank_batch = config.data.batch_size // ctx.world_size
    sampler = build_train_sampler(config, train_ds, ctx, per_rank_batch)
    batches_per_epoch = training_batches(len(sampler), per_rank_batch)
    steps_per_epoch = math.ceil(batches_per_epoch / config.accumulation_steps)
    model, loss_fn, optimizer = build_parts(config, task.num_classes, train_ds)
    loaded = load_summary(model)
    if loaded:
        log(loaded)
    plan = unfreeze_plan(config)
    # a backbone frozen for the whole run (no gradual unfreezing) only runs its convolutions forward
    forward_only = plan is None and convolutions_frozen(model)
    memory_format = resolve_memory_format(
        config.memory_format,
        device,
        precision,
        forward_only=forward_only,
        image_size=config.data.image_size,
    )
    if config.task == "detection":  # lists of differently sized images: no memory format
        memory_format = torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    early = None
    if config.early_stopping is not None:
        es = config.early_stopping
        early = cb.EarlyStopping(
            config.monitor_metric, config.monitor_direction, es.patience, es.min_delta
        )
    # fmt: off
    run = Run(
        config=config, ctx=ctx, device=device, memory_format=memory_format, task=task,
        model=model, module=model, loss_fn=loss_fn, optimizer=optimizer,
        amp=MixedPrecision(precision), schedule=build_schedule(config, optimizer, steps_per_epoch),
        unfreeze=None if plan is None else UnfreezeProgress(plan, model, optimizer), early=early,
        sampler=sampler, loader=None, val_loader=None, batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch, classes=classes, paths=RunDir(Path(config.output)),
    )
    # fmt: on
    run.choices = _choices(run, precision, per_rank_batch)
    run.val_images = val_ds
    attach_recipe(run, log)
    log(
        f"precision: {precision.name} ({precision.reason}); memory format: {run.choices['memory_format']}"
    )
    train_ds, val_ds = _training_module(run, train_ds, val_ds, per_rank_batch, log)
    _loaders(run, train_ds, val_ds, per_rank_batch)
    task.attach(run, train_ds)
    maybe_compile(run, log)  # compile: false | true | auto (a short probe decides)
    return run


def _training_module(
    run: Run, train_ds: Any, val_ds: Any, batch: int, log: Callable[[str], None]
) -> tuple[Any, Any]:
    """Set ``run.module``: the head on cached features, or the model wrapped (DDP) / compiled."""
    from strop import finetune

    config, choices = run.config, run.choices
    use_cache, why = cache_decision(config, run.model, train_ds, distributed=run.ctx.enabled)
    choices["feature_cache_reason"] = why
    if use_cache:
        t0 = time.perf_counter()
        head = finetune.head_module(run.model)
        train_ds, val_ds = (
            extract_features(
                run.model,
                head,
                ds,
                batch_size=extraction_batch_size(config),
                to_device=run.to_device,
                autocast=run.amp.autocast,
            )
            for ds in (train_ds, val_ds)
        )
        run.val_features = val_ds
        run.sampler = build_train_sampler(config, train_ds, run.ctx, batch)
        run.module = head
        head_tensors = {id(t) for t in head.state_dict(keep_vars=True).values()}
        # what an earlier run in this process stored in this folder says nothing about this model
        forget_shared(run.paths.last.parent)
        run.frozen_keys = frozenset(
            k for k, t in run.model.state_dict(keep_vars=True).items() if id(t) not in head_tensors
        )
        choices["feature_cache"] = True
        log(
            f"feature cache: used — {why} ({len(train_ds) + len(val_ds)} items in "
            f"{time.perf_counter() - t0:.1f}s, {tuple(train_ds.tensors[0].shape[1:])} each)"
        )
        return train_ds, val_ds
    if config.feature_cache != "off":
        log(f"feature cache: not used — {why}")
    names = fsdp.param_names(run.model)
    run.module = wrap_model(
        run.model,
        run.ctx,
        device=run.device,
        sync_batchnorm=config.sync_batchnorm,
        strategy=config.strategy,
    )
    if run.sharded:
        # fully_shard replaced every parameter by a sharded one: the optimizer (and the schedule
        # stepping it) must hold the new ones
        run.optimizer = fsdp.rebind_optimizer(run.optimizer, names, run.model)
        run.schedule = build_schedule(config, run.optimizer, run.steps_per_epoch)
    choices["strategy"] = "fsdp" if run.sharded else "ddp" if run.ctx.enabled else "none"
    if config.strategy == "fsdp":
        log(
            "strategy: fsdp — "
            + (
                "model sharded over the processes (FSDP2 fully_shard)"
                if run.sharded
                else "one process, nothing to shard: plain model"
            )
        )
    if run.sharded and run.val_images is not None:
        run.val_images = None  # diagnostics would run the sharded model on rank 0 alone
        log("diagnostics: not written during fsdp runs; `strop eval RUN_DIR` writes them")
    return train_ds, val_ds


def training_batches(samples: int, batch: int) -> int:
    """Training batches per epoch: a last batch of a single image is dropped (BatchNorm cannot
    normalise one value per channel in training mode; fastai drops every short last batch),
    any other short last batch is kept."""
    if samples > 1 and batch > 1 and samples % batch == 1:
        return samples // batch
    return math.ceil(samples / batch)


def val_batch_size(config: Any, world_size: int = 1) -> int:
    """Images per validation batch on each process: ``data.val_batch_size`` divided among the
    processes, else max(the training batch, 64) — a forward pass without autograd needs a third
    of a training step's memory, and a few-shot recipe's batch of 10 would make validation the
    slowest part of an epoch. Detection keeps the training batch (its images are large)."""
    d = config.data
    if d.val_batch_size is not None:
        return max(1, d.val_batch_size // world_size)
    per_rank = max(1, d.batch_size // world_size)
    return per_rank if config.task == "detection" else max(per_rank, 64)


def extraction_batch_size(config: Any) -> int:
    """Images per batch of the feature cache's extraction pass (a forward pass in eval mode, as
    validation): ``data.val_batch_size`` when set; else the default validation batch, raised for
    small images up to as many pixels per batch as 64 images of 224×224 (at most 256 images).
    Small images are where a batch's fixed cost weighs: resnet18 extracts 16-px images ~2.5×
    faster at 256 than at 64 on a CPU, and the features are per image, whatever the batch."""
    if config.data.val_batch_size is not None:
        return val_batch_size(config)
    side = config.data.image_size
    return max(val_batch_size(config), min(256, (64 * 224 * 224) // (side * side)))


def _loaders(run: Run, train_ds: Any, val_ds: Any, batch: int) -> None:
    from strop.data import make_loader

    config, ctx = run.config, run.ctx
    val_batch = val_batch_size(config, ctx.world_size)
    drop_last = run.batches_per_epoch * batch < len(run.sampler)  # see training_batches
    val_sampler = None
    if ctx.enabled:  # each rank validates its share; metrics are summed across ranks
        val_sampler = DistributedSampler(
            val_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False
        )
    if run.choices["feature_cache"]:
        # cached tensors: sliced batches, no per-item indexing or collation
        run.loader = TensorBatches(
            train_ds, batch_size=batch, sampler=run.sampler, drop_last=drop_last
        )
        run.val_loader = TensorBatches(val_ds, batch_size=val_batch, sampler=val_sampler)
        return
    for ds in (train_ds, val_ds):
        if hasattr(ds, "batch_memory_format"):  # folder datasets: batches laid out for the model
            ds.batch_memory_format = run.memory_format
    common = dict(
        shuffle=False,
        seed=config.seed,
        num_workers=config.data.num_workers,
        collate_fn=run.task.collate_fn,
    )
    run.loader = make_loader(
        train_ds,
        batch_size=batch,
        drop_last=drop_last,
        device=run.device,
        sampler=run.sampler,
        **common,
        # random augmentation in worker processes: re-fork them each epoch so that their
        # seeds follow the epoch (reseeded by the loop) and a resumed run draws the same numbers
        persistent_workers=None if getattr(train_ds, "deterministic", True) else False,
    )
    run.val_loader = make_loader(
        val_ds, batch_size=val_batch, device=run.device, sampler=val_sampler, **common
    )
