"""``fit(config)``: a whole fine-tuning run, from a config to a run folder.

The run folder holds ``config.yaml`` (the resolved config), ``run.json`` (what ``auto`` picked and
why), ``metrics.csv``, ``checkpoints/last.pt`` and ``checkpoints/best.pt``, and ``plots/``.
``fit(config, resume=True)`` continues from ``checkpoints/last.pt``; on CPU with the same seed it
reaches exactly the weights of a run that was never interrupted (the data order of each epoch is a
function of ``seed + epoch``, and checkpoints hold the RNG states and the position in the epoch) —
at epoch boundaries also with DataLoader workers and random augmentation (workers are re-forked
and reseeded each epoch); mid-epoch only with ``num_workers: 0`` or deterministic augmentation,
since the workers' RNG streams are not checkpointed (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DistributedSampler

from strop import __version__
from strop._checks import did_you_mean
from strop.train import callbacks as cb
from strop.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from strop.train.config import Config
from strop.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    init_from_env,
    shutdown,
    wrap_model,
)
from strop.train.feature_cache import TensorBatches, cache_decision, extract_features
from strop.train.loop import Engine, TrainState, _lr, evaluate, train_one_epoch

__all__ = ["RunResult", "build_engine_parts", "fit", "resolve_device"]


@dataclass
class RunResult:
    """What a run did: its folder, per-epoch history, the best metric and the choices made."""

    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "val_accuracy"
    best_metric: float | None = None
    best_epoch: int | None = None
    seconds: float = 0.0
    interrupted: str | None = None
    choices: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics (empty when no epoch finished)."""
        return self.history[-1] if self.history else {}


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for one process) that can start part-way into an epoch.

    The order of epoch ``e`` is ``randperm`` seeded with ``seed + e`` — torch's own rule — so a
    resumed run sees exactly the batches the uninterrupted one would have.
    """

    def __init__(self, dataset: Any, *, ctx: DistContext, seed: int, shuffle: bool, batch_size: int):
        super().__init__(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.skip = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        """Select ``epoch``'s order and skip the first ``batches_done`` batches of it."""
        self.set_epoch(epoch)
        self.skip = batches_done * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)


def resolve_device(name: str, ctx_local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA when available (this process's local rank), else CPU."""
    if name == "auto":
        return torch.device("cuda", ctx_local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"config: device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: 'cuda' was asked for but torch.cuda.is_available() is False; got {name!r}")
    return device


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load_data(config: Config) -> tuple[Any, Any, list[str] | None, int]:
    """``(train_ds, val_ds, classes, num_classes)``, with num_classes checked against the config."""
    from strop import data as sdata

    d = config.data
    if d.root is None:
        raise ValueError("config: data.root is required (a folder of images, or bundled:digits / bundled:shapes); got null")
    root = bundled_root(d.root)
    if config.task == "classification":
        train_ds, val_ds, classes = sdata.image_folder(
            root,
            image_size=d.image_size,
            val_fraction=d.val_fraction,
            seed=config.seed,
            augment=d.augment,
            strict=d.strict,
            cache=None if d.cache == "none" else d.cache,
        )
        n = len(classes)
    else:
        train_ds, val_ds, n = sdata.segmentation_folder(
            root,
            image_size=d.image_size,
            val_fraction=d.val_fraction,
            seed=config.seed,
            num_classes=d.num_classes,
            ignore_index=d.ignore_index,
            strict=d.strict,
            augment=d.augment,
            cache=None if d.cache == "none" else d.cache,
        )
        classes = None
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
            "no val/ folder); best.pt, early stopping and plateau schedules need a validation set")
    return train_ds, val_ds, classes, n


BUNDLED = ("digits", "shapes", "shapes-multiclass")


def bundled_root(root: str) -> Path:
    """``bundled:NAME`` -> the bundled data set written once under ``$STROP_DATA`` (default
    ``~/.cache/strop/data``); any other string is a folder path.

    ``digits`` is scikit-learn's real handwritten digits as an ImageFolder; ``shapes`` a synthetic
    binary segmentation set (images/ + masks/); ``shapes-multiclass`` the same with one class per
    shape kind.
    """
    import os

    from strop import data as sdata

    if not root.startswith("bundled:"):
        return Path(root)
    name = root.split(":", 1)[1]
    if name not in BUNDLED:
        raise ValueError(f"config: data.root {root!r} names no bundled data set; available: "
                         + ", ".join(f"bundled:{b}" for b in BUNDLED))
    base = Path(os.environ.get("STROP_DATA", Path.home() / ".cache" / "strop" / "data"))
    if name == "digits":
        return sdata.write_digits(base / "digits")
    return sdata.write_shapes(base / name, num_classes=2 if name == "shapes" else 4)


def build_engine_parts(config: Config, num_classes: int, device: torch.device, precision: Any) -> tuple[nn.Module, Any, Any]:
    """``(model, loss_fn, optimizer)`` from the config (no scheduler: it needs the loader size)."""
    from strop import finetune, losses

    out_channels = 1 if (config.task == "segmentation" and num_classes == 2) else num_classes
    m = config.model
    model = finetune.build_model(
        m.name,
        num_classes=out_channels,
        weights=m.weights,
        freeze=m.freeze,
        train_bn=m.train_bn,
        strict=m.strict,
        sha256=m.sha256,
        trust_pickle=m.trust_pickle,
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
        finetune.GradualUnfreezing(head_epochs=config.gradual_unfreeze.head_epochs, train_bn=m.train_bn
                                   ).on_epoch_start(0, model)
    loss_fn = losses.build(config.loss)
    o = config.optimizer
    lr = o.lr
    if config.scale_lr:
        # linear scaling rule (Goyal et al. 2017): lr is given for a global batch of 256
        lr = lr * config.data.batch_size * config.accumulation_steps / 256
    groups = finetune.param_groups(
        model, lr, head_lr_mult=o.head_lr_mult, layer_decay=o.layer_decay, weight_decay=o.weight_decay
    )
    if o.name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, betas=o.betas)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=o.betas)
    return model, loss_fn, optimizer


def build_schedule(config: Config, optimizer: Any, steps_per_epoch: int) -> Any:
    """The config's LR schedule; a plateau schedule follows the monitor's direction.

    torch's ``ReduceLROnPlateau`` defaults to ``mode="min"``: fed the default monitor
    ``val_accuracy`` it would cut the LR while accuracy improves.
    """
    from strop import schedules
    from strop.schedules.scheduler import SCHEDULES

    spec = config.schedule
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
                "(it follows the monitor) or set monitor_mode")
    return schedules.build(spec, optimizer, epochs=config.epochs, steps_per_epoch=steps_per_epoch, **extra)


@contextlib.contextmanager
def _signals_stop(state: TrainState) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop at the next optimizer step (state is then saved)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        state.should_stop = True
        state.interrupted = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def fit(
    config: Config,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train as ``config`` says; returns a :class:`RunResult`. See the module docstring."""
    from strop import finetune
    from strop.data import make_loader
    from strop.precision import MixedPrecision, resolve, resolve_memory_format

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    ctx = init_from_env(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    log = (log or _log_default) if ctx.is_main else (lambda msg: None)
    try:
        precision = resolve(config.precision, device)
        memory_format = resolve_memory_format(config.memory_format, device, precision)
        run_dir = Path(config.output)
        ckpt_dir = run_dir / "checkpoints"
        last_path = ckpt_dir / "last.pt"
        if resume and not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}; start without --resume")

        # rank 0 first: bundled data (and a disk sample cache) is written once, then read by the others
        if not ctx.is_main:
            barrier(ctx)
        train_ds, val_ds, classes, num_classes = _load_data(config)
        _check_monitor(config, num_classes)
        if ctx.is_main:
            barrier(ctx)
        if config.data.batch_size % ctx.world_size:
            raise ValueError(
                f"config: data.batch_size ({config.data.batch_size}) is the global batch and must be divisible "
                f"by the number of processes ({ctx.world_size})"
            )
        per_rank_batch = config.data.batch_size // ctx.world_size
        sampler = ResumableSampler(train_ds, ctx=ctx, seed=config.seed, shuffle=True, batch_size=per_rank_batch)
        batches_per_epoch = math.ceil(len(sampler) / per_rank_batch)
        steps_per_epoch = math.ceil(batches_per_epoch / config.accumulation_steps)

        model, loss_fn, optimizer = build_engine_parts(config, num_classes, device, precision)
        model = model.to(device, memory_format=memory_format)
        unfreeze_plan = None
        if config.gradual_unfreeze is not None:
            g = config.gradual_unfreeze
            unfreeze_plan = finetune.GradualUnfreezing(
                head_epochs=g.head_epochs, lr_mult=g.lr_mult, train_bn=config.model.train_bn
            )
        scheduler = None
        if config.schedule is not None:
            scheduler = build_schedule(config, optimizer, steps_per_epoch)
        amp = MixedPrecision(precision)
        choices: dict[str, Any] = {
            "device": str(device),
            "precision": precision.name,
            "precision_reason": precision.reason,
            "memory_format": str(memory_format).replace("torch.", ""),
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "per_process_batch": per_rank_batch,
            "steps_per_epoch": steps_per_epoch,
            "compile": False,
            "feature_cache": False,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__,
            "strop": __version__,
        }
        log(f"precision: {precision.name} ({precision.reason}); memory format: {choices['memory_format']}")
        engine = Engine(
            model=model, loss_fn=loss_fn, optimizer=optimizer, amp=amp, scheduler=scheduler,
            device=device, memory_format=memory_format, accumulation_steps=config.accumulation_steps,
            clip_grad_norm=config.clip_grad_norm, aux_weight=config.model.aux_weight,
            nonfinite=config.nonfinite, task=config.task, num_classes=num_classes,
        )

        use_cache, why = cache_decision(config, model, train_ds, distributed=ctx.enabled)
        choices["feature_cache_reason"] = why
        if use_cache:
            t_cache = time.perf_counter()
            head = finetune.head_module(model)
            train_ds = extract_features(model, head, train_ds, engine=engine, batch_size=per_rank_batch)
            val_ds = extract_features(model, head, val_ds, engine=engine, batch_size=per_rank_batch)
            sampler = ResumableSampler(train_ds, ctx=ctx, seed=config.seed, shuffle=True, batch_size=per_rank_batch)
            engine.model = head
            choices["feature_cache"] = True
            log(f"feature cache: used — {why} ({len(train_ds) + len(val_ds)} items in "
                f"{time.perf_counter() - t_cache:.1f}s, {tuple(train_ds.tensors[0].shape[1:])} each)")
        else:
            if config.feature_cache != "off":
                log(f"feature cache: not used — {why}")
            engine.model = wrap_model(model, ctx, device=device, sync_batchnorm=config.sync_batchnorm)
            if config.compile:
                try:
                    engine.model = torch.compile(engine.model)
                    choices["compile"] = True
                except Exception as exc:  # compile support varies by platform; training must not
                    log(f"torch.compile unavailable ({type(exc).__name__}: {exc}); training uncompiled")
                    choices["compile_fallback"] = f"{type(exc).__name__}: {exc}"
        val_sampler = None
        if ctx.enabled:  # each rank validates its share; metrics are summed across ranks
            val_sampler = DistributedSampler(val_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
        if use_cache:  # cached tensors: sliced batches, no per-item indexing or collation
            loader: Any = TensorBatches(train_ds, batch_size=per_rank_batch, sampler=sampler)
            val_loader: Any = TensorBatches(val_ds, batch_size=per_rank_batch, sampler=val_sampler)
        else:
            loader = make_loader(
                train_ds, batch_size=per_rank_batch, shuffle=False, seed=config.seed,
                num_workers=config.data.num_workers, device=device, sampler=sampler,
                # random augmentation in worker processes: re-fork them each epoch so that their
                # seeds follow the epoch (reseeded below) and a resumed run draws the same numbers
                persistent_workers=None if getattr(train_ds, "deterministic", True) else False,
            )
            val_loader = make_loader(
                val_ds, batch_size=per_rank_batch, shuffle=False, seed=config.seed,
                num_workers=config.data.num_workers, device=device, sampler=val_sampler,
            )
        state = TrainState()
        early = None
        if config.early_stopping is not None:
            es = config.early_stopping
            early = cb.EarlyStopping(config.monitor_metric, config.monitor_direction, es.patience, es.min_delta)

        def checkpoint_payload() -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "amp": amp.state_dict(),
                "state": state.to_dict(),
                "rng": capture_rng(),
                "early_stopping": early.state_dict() if early is not None else None,
                "unfreeze": unfreeze_plan.state_dict() if unfreeze_plan is not None and hasattr(unfreeze_plan, "state_dict") else None,
                "config": config.to_dict(),
                "classes": classes,
                "num_classes": num_classes,
                "strop_version": __version__,
            }

        if resume:
            ck = load_checkpoint(last_path, map_location=device)
            if unfreeze_plan is not None and ck.get("unfreeze") is not None and hasattr(unfreeze_plan, "load_state_dict"):
                unfreeze_plan.load_state_dict(ck["unfreeze"])
            state = TrainState.from_dict(ck["state"])
            if not ctx.is_main:
                state.epoch_sums = {}  # rank 0 carries the whole epoch's sums (see save_last)
            if unfreeze_plan is not None:
                # re-create the param groups the plan had added before the checkpoint
                for e in range(state.epoch + (1 if state.batch_in_epoch else 0)):
                    unfreeze_plan.on_epoch_start(e, model, optimizer)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            if scheduler is not None and ck.get("scheduler") is not None:
                scheduler.load_state_dict(ck["scheduler"])
                if ck["config"]["epochs"] != config.epochs:
                    # a fixed-horizon schedule (cosine, onecycle) is re-planned for the new length
                    scheduler.replan(epochs=config.epochs, steps_per_epoch=steps_per_epoch)
                    log(f"schedule re-planned for {config.epochs} epochs (was {ck['config']['epochs']})")
            old = ck["config"]
            changed = (old["data"]["batch_size"], old["accumulation_steps"]) != (
                config.data.batch_size, config.accumulation_steps)
            if state.batch_in_epoch and changed:
                raise ValueError(
                    "--resume: data.batch_size/accumulation_steps changed since the mid-epoch checkpoint "
                    f"{last_path}; resume with the old values or from an epoch-end checkpoint")
            amp.load_state_dict(ck["amp"])
            if early is not None and ck.get("early_stopping") is not None:
                early.load_state_dict(ck["early_stopping"])
            restore_rng(ck["rng"])
            # an interrupted run continues; one that early stopping ended stays ended
            state.should_stop = _early_stopped(ck) and not state.interrupted
            state.interrupted = None
            log(f"resumed from {last_path} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step}")

        def save_last() -> None:
            # every rank calls this at the same step: a checkpoint holds the epoch's train sums over
            # all ranks (on resume rank 0 carries them, the others start from zero)
            sums = state.epoch_sums
            if ctx.enabled and sums:
                keys = sorted(sums)
                total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), ctx)
                sums = dict(zip(keys, total.tolist(), strict=True))
            if ctx.is_main:
                payload = checkpoint_payload()
                payload["state"]["epoch_sums"] = dict(sums)
                save_checkpoint(payload, last_path)

        def on_step(st: TrainState) -> None:
            if ctx.enabled:
                # a signal may reach one rank first: all ranks stop at the same step or DDP would hang
                stop = _broadcast_flag(bool(st.interrupted), ctx)
                if stop and not st.interrupted:
                    st.interrupted = "SIGTERM (on another rank)"
                st.should_stop = st.should_stop or stop
            n = config.checkpoint_every_steps
            if st.interrupted or (n and st.step % n == 0):
                save_last()

        metric_names = _metric_names(config.task, num_classes)
        # a combined loss ({dice: 1, bce: 1}) logs each part per step: loss_dice, loss_bce
        metric_names += [f"loss_{name}" for name in getattr(loss_fn, "losses", {})]
        cbs: list[Any] = []
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            (run_dir / "run.json").write_text(json.dumps(choices, indent=2))
            cbs.append(cb.CSVLogger(run_dir / "metrics.csv", metric_names))
            cbs.append(cb.ProgressBar(config.epochs, batches_per_epoch, enabled=config.progress))
            tb = _tensorboard(run_dir)
            if tb is not None:
                cbs.append(tb)
        if early is not None:
            cbs.append(early)
        cbs.extend(callbacks)

        history = _history_from_csv(run_dir / "metrics.csv", state.epoch) if resume and ctx.is_main else []
        reduce = (lambda t: all_reduce_sum(t, ctx)) if ctx.enabled else None
        cb.call(cbs, "on_fit_start", state)
        try:
            with _signals_stop(state):
                while state.epoch < config.epochs and not state.should_stop:
                    epoch_t0 = time.perf_counter()
                    if unfreeze_plan is not None and state.batch_in_epoch == 0:
                        unfreeze_plan.on_epoch_start(state.epoch, model, optimizer)
                    sampler.set_position(state.epoch, state.batch_in_epoch)
                    if isinstance(getattr(loader, "generator", None), torch.Generator):
                        loader.generator.manual_seed(config.seed * 1_000_003 + state.epoch)
                    cb.call(cbs, "on_epoch_start", state)
                    train_logs = train_one_epoch(
                        engine, loader, state, cbs, num_batches=batches_per_epoch, on_step=on_step
                    )
                    if state.interrupted:
                        break  # on_step saved a mid-epoch checkpoint
                    if state.batch_in_epoch < batches_per_epoch:
                        break  # a callback stopped mid-epoch
                    if ctx.enabled:  # each rank trained on its shard; log the whole epoch's numbers
                        train_logs = _global_train_logs(state.epoch_sums, train_logs, ctx)
                    val_logs = evaluate(engine, val_loader, reduce=reduce)
                    logs = {**train_logs, **val_logs, "lr": _lr(optimizer)}
                    if scheduler is not None:
                        scheduler.on_epoch_end(logs.get(config.monitor_metric))
                    logs["epoch_seconds"] = time.perf_counter() - epoch_t0
                    logs["skipped_steps"] = float(state.skipped_steps)
                    logs["nonfinite_batches"] = float(state.nonfinite_batches)
                    is_best = _is_better(logs.get(config.monitor_metric), state.best_metric, config.monitor_direction)
                    if is_best and _finite_model(model):
                        state.best_metric = float(logs[config.monitor_metric])
                        state.best_epoch = state.epoch + 1
                    else:
                        is_best = False
                    cb.call(cbs, "on_epoch_end", state, logs)
                    history.append({"epoch": float(state.epoch + 1), **logs})
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    state.epoch_sums = {}
                    if ctx.enabled:  # every rank follows rank 0's decision to stop
                        state.should_stop = bool(_broadcast_flag(state.should_stop, ctx))
                    # best before last: a crash between the two then redoes this epoch and
                    # rewrites best.pt, instead of resuming past a best.pt that was never written
                    if is_best and ctx.is_main:
                        save_checkpoint(
                            {"model": model.state_dict(), "config": config.to_dict(), "classes": classes,
                             "num_classes": num_classes, "epoch": state.epoch, "metrics": logs,
                             "strop_version": __version__},
                            ckpt_dir / "best.pt",
                        )
                    save_last()
        finally:
            cb.call(cbs, "on_fit_end", state)  # closes the CSV log even when training raised
        if ctx.is_main and history:
            from strop.train.report import plot_run

            plot_run(run_dir)
        if state.interrupted:
            log(f"interrupted by {state.interrupted}: state saved to {last_path}; continue with --resume")
        if state.skipped_steps:
            log(f"fp16 scaler skipped {state.skipped_steps} optimizer step(s) (inf/NaN gradients)")
        if state.nonfinite_batches:
            log(f"skipped {state.nonfinite_batches} batch(es) with a non-finite loss or gradient")
        return RunResult(
            run_dir=run_dir, history=history, monitor=config.monitor_metric, best_metric=state.best_metric,
            best_epoch=state.best_epoch, seconds=time.perf_counter() - t0, interrupted=state.interrupted,
            choices=choices,
        )
    finally:
        shutdown(ctx)


def _global_train_logs(sums: dict[str, float], logs: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """``train_loss`` (and ``train_accuracy``) over every rank's images, not rank 0's alone."""
    t = torch.tensor([sums.get("loss", 0.0), sums.get("correct", 0.0), sums.get("count", 0.0)], dtype=torch.float64)
    loss, correct, count = all_reduce_sum(t, ctx).tolist()
    out = {"train_loss": loss / max(count, 1.0)}
    if "train_accuracy" in logs:
        out["train_accuracy"] = correct / max(count, 1.0)
    return out


def _check_monitor(config: Config, num_classes: int) -> None:
    """The monitored metric must be one the run logs (else best.pt would never be written)."""
    allowed = [m for m in _metric_names(config.task, num_classes) if m not in ("images_per_s", "epoch_seconds")]
    if config.monitor_metric not in allowed:
        raise ValueError(
            f"config: monitor {config.monitor_metric!r} is not a metric this run logs"
            f"{did_you_mean(config.monitor_metric, allowed)} available: {', '.join(allowed)}"
        )


def _early_stopped(ck: dict[str, Any]) -> bool:
    es = ck.get("early_stopping")
    patience = (ck["config"].get("early_stopping") or {}).get("patience")
    return bool(es and patience and es["bad_epochs"] >= patience)


def _broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t, ctx).item() > 0)


def _metric_names(task: str, num_classes: int) -> list[str]:
    base = ["train_loss", "val_loss"]
    if task == "classification":
        names = [*base, "train_accuracy", "val_accuracy"] + (["val_top5"] if num_classes > 5 else [])
    else:
        names = [*base, "val_dice", "val_iou", "val_pixel_accuracy"]
    return [*names, "epoch_seconds", "images_per_s", "skipped_steps", "nonfinite_batches"]


def _is_better(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _finite_model(model: nn.Module) -> bool:
    # a NaN model is never saved as best, whatever its metric says
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _tensorboard(run_dir: Path) -> Any:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return cb.TensorBoardLogger(run_dir / "tensorboard")


def _history_from_csv(path: Path, epochs_done: int) -> list[dict[str, float]]:
    import csv

    if not path.exists():
        return []
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            try:  # a row torn by a crash is skipped, not fatal to the resume
                if row["kind"] == "epoch" and int(row["epoch"]) <= epochs_done:
                    out.append({k: float(v) for k, v in row.items() if k != "kind" and v not in ("", None)})
            except (TypeError, ValueError):
                continue
    return out
