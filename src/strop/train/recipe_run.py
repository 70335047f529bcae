"""The recipe parts inside a run: the loss spec (label smoothing, ``weight: auto``), the training
sampler (``data.sampler: balanced``), and the EMA / SWA / Mixup objects with the trainer's hooks.

``fit`` calls, in order: :func:`attach` (in ``build_run``, on the unwrapped model, before DDP or
``torch.compile``), :func:`on_epoch_start`, :func:`mix` on each training batch, :func:`after_step`
after each optimizer step, :func:`after_validation` at each epoch end (EMA validated beside the
raw weights: ``val_accuracy_ema``; SWA folds in the epoch's weights), :func:`finish` at the end
(SWA's ``update_bn`` and validation, which weights are best — ``run.json`` ``weights`` — and the
diagnostics). The EMA, SWA, mixer and sampler are named stateful objects of ``Run.stateful``, so
``last.pt`` holds them and ``--resume`` restores them exactly.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any

import torch

from strop._checks import fail
from strop.data.samplers import class_counts, class_weights, pixel_counts
from strop.train.config_recipes import (
    apply_label_smoothing,
    resolve_auto_class_weights,
    uses_auto_class_weights,
)
from strop.train.sampler import ResumableBalancedSampler, ResumableSampler

__all__ = [
    "AveragedWeights",
    "SWAGate",
    "after_step",
    "after_validation",
    "attach",
    "build_train_sampler",
    "cache_blocker",
    "extra_metric_names",
    "finish",
    "loss_spec",
    "mix",
    "on_epoch_start",
]


# ----------------------------------------------------------------------------- loss and data


def loss_spec(config: Any, train_ds: Any = None) -> Any:
    """The ``strop.losses.build`` spec of ``config.loss`` with ``label_smoothing`` applied and
    ``weight: auto`` replaced by inverse-frequency weights over ``train_ds`` (class counts, or
    mask pixel counts for segmentation)."""
    spec = config.loss
    if config.task == "classification":
        spec = apply_label_smoothing(spec, config.label_smoothing)
    if not uses_auto_class_weights(spec):
        return spec
    if train_ds is None:
        fail(
            "config",
            "loss weight: auto needs the training data to count the classes",
            hint="build the loss with the training dataset (strop.train.setup.build_parts)",
        )
    return resolve_auto_class_weights(spec, class_weights(_counts(config, train_ds)).tolist())


def _counts(config: Any, ds: Any) -> torch.Tensor:
    if config.task == "classification":
        return class_counts(ds.targets, len(ds.classes))
    masks = (ds.load(i)[1] for i in range(len(ds)))
    return pixel_counts(masks, ds.num_classes, ignore_index=config.data.ignore_index)


def build_train_sampler(config: Any, ds: Any, ctx: Any, batch_size: int) -> Any:
    """The training sampler: shuffled (``DistributedSampler``'s order) or class-balanced."""
    if config.data.sampler == "balanced":
        labels = ds.targets if hasattr(ds, "targets") else ds.tensors[1]  # folder / cached features
        return ResumableBalancedSampler(labels, ctx=ctx, seed=config.seed, batch_size=batch_size)
    return ResumableSampler(ds, ctx=ctx, seed=config.seed, shuffle=True, batch_size=batch_size)


def cache_blocker(config: Any) -> str | None:
    """Why the frozen-backbone feature cache cannot be used with the recipe (None: it can)."""
    if config.mixup is not None:
        return "mixup mixes images, not features"
    if config.ema is not None or config.swa is not None:
        return "EMA/SWA average the whole model and validate it on images"
    return None


# ----------------------------------------------------------------------------- EMA, SWA, mixup


class AveragedWeights:
    """A :class:`~strop.train.ema.ModelEMA` and the best validation metric its weights reached
    (``checkpoints/best_ema.pt`` holds those weights), as one stateful object."""

    def __init__(self, ema: Any) -> None:
        self.ema = ema
        self.best_metric: float | None = None
        self.best_epoch: int | None = None

    @property
    def module(self) -> torch.nn.Module:
        return self.ema.module

    def update(self, model: torch.nn.Module) -> None:
        self.ema.update(model)

    def __repr__(self) -> str:
        return repr(self.ema)

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.ema.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state)
        self.best_metric, self.best_epoch = state.get("best_metric"), state.get("best_epoch")


class SWAGate:
    """The run's LR schedule, silent in SWA epochs (``SWALR`` owns the LR then); everything else
    (``state_dict``, ``replan``, ...) is the schedule's own."""

    def __init__(self, schedule: Any, swa: Any) -> None:
        self.schedule, self.swa = schedule, swa
        self.epoch = 0

    def on_optimizer_step(self) -> None:
        if not self.swa.active(self.epoch):
            self.schedule.on_optimizer_step()

    def on_epoch_end(self, metric: float | None = None) -> None:
        if not self.swa.active(self.epoch):
            self.schedule.on_epoch_end(metric)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.schedule, name)


def attach(run: Any, log: Callable[[str], None]) -> None:
    """Build the config's EMA, SWA and mixer onto ``run`` (its model is not wrapped yet)."""
    from strop.data.mixing import BatchMix
    from strop.train.ema import ModelEMA
    from strop.train.swa import SWA

    config = run.config
    if config.ema is not None:
        e = config.ema
        run.ema = AveragedWeights(
            ModelEMA(
                run.model,
                decay=e.decay,
                warmup=e.warmup,
                warmup_gamma=e.warmup_gamma,
                warmup_power=e.warmup_power,
            )
        )
    if config.swa is not None:
        s = config.swa
        run.swa = SWA(
            run.model,
            run.optimizer,
            start_epoch=s.start_epoch,
            lr=s.lr,
            anneal_epochs=s.anneal_epochs,
            anneal_strategy=s.anneal_strategy,
        )
        if run.schedule is not None:
            run.schedule = SWAGate(run.schedule, run.swa)
    if config.mixup is not None:
        m = config.mixup
        # each rank mixes its own shard with its own stream
        run.mixer = BatchMix(
            run.num_classes,
            mixup_alpha=m.mixup_alpha,
            cutmix_alpha=m.cutmix_alpha,
            prob=m.prob,
            switch_prob=m.switch_prob,
            seed=config.seed * 1_000_003 + 7919 * run.ctx.rank,
        )
        run.choices["train_accuracy"] = "against the argmax of the mixed (soft) targets"
    options = getattr(run.loss_fn, "options", {})
    if uses_auto_class_weights(config.loss) and options.get("weight") is not None:
        run.choices["class_weights"] = [round(float(w), 6) for w in options["weight"]]
        log(f"class weights (inverse frequency): {run.choices['class_weights']}")
    parts = [name for name in ("ema", "swa", "mixer") if getattr(run, name) is not None]
    if parts:
        log("recipe: " + ", ".join(f"{name} {getattr(run, name)!r}" for name in parts))


def on_epoch_start(run: Any, state: Any) -> None:
    """SWA takes over the LR at its first epoch; the schedule gate learns the epoch."""
    if run.swa is not None:
        run.swa.on_epoch_start(state.epoch)
        if isinstance(run.schedule, SWAGate):
            run.schedule.epoch = state.epoch


def mix(run: Any, batch: Any) -> Any:
    """Mixup/CutMix of a training batch (on the device): ``(x, soft targets)``."""
    mixer = getattr(run, "mixer", None)
    return batch if mixer is None else mixer(*batch)


def after_step(run: Any) -> None:
    """After each optimizer step: fold the weights into the EMA."""
    if getattr(run, "ema", None) is not None:
        run.ema.update(run.model)


def extra_metric_names(run: Any) -> list[str]:
    """The per-epoch metrics the recipe adds (``val_accuracy_ema``, ...)."""
    if run.ema is None:
        return []
    return [f"{name}_ema" for name in ("val_loss", *run.task.val_metric_names())]


def _validate(run: Any, model: torch.nn.Module, suffix: str) -> dict[str, float]:
    from strop.train.distributed import all_reduce_sum
    from strop.train.loop import evaluate

    ctx = run.ctx
    logs = evaluate(
        model,
        run.loss_fn,
        run.val_loader,
        task=run.task,
        precision=run.amp,
        device=run.device,
        memory_format=run.memory_format,
        reduce=functools.partial(all_reduce_sum, ctx=ctx) if ctx.enabled else None,
    )
    return {f"{k}_{suffix}": v for k, v in logs.items()}


def _save_weights(
    run: Any, model: torch.nn.Module, path: Any, epoch: int, logs: dict[str, float]
) -> None:
    from strop.train.checkpoint import save_checkpoint

    if run.ctx.is_main:
        save_checkpoint(
            {"model": model.state_dict(), **run.metadata(), "epoch": epoch, "metrics": logs}, path
        )


def after_validation(run: Any, state: Any) -> dict[str, float]:
    """At an epoch's end: validate the EMA (``*_ema`` metrics; ``best_ema.pt`` when its monitor
    improves) and fold the epoch's weights into SWA. Returns the metrics to log."""
    from strop.train.metrics import is_better

    if run.swa is not None:
        run.swa.on_epoch_end(state.epoch, run.model)
    if run.ema is None:
        return {}
    logs = _validate(run, run.ema.module, "ema")
    config = run.config
    value = logs.get(f"{config.monitor_metric}_ema")
    if is_better(value, run.ema.best_metric, config.monitor_direction):
        run.ema.best_metric, run.ema.best_epoch = float(value), state.epoch + 1
        _save_weights(
            run,
            run.ema.module,
            run.paths.root / "checkpoints" / "best_ema.pt",
            state.epoch + 1,
            logs,
        )
    return logs


def _finish_swa(run: Any, state: Any, log: Callable[[str], None]) -> float | None:
    if run.swa is None or run.swa.n_averaged == 0:
        return None
    run.swa.finalize(run.loader, run.device)  # BatchNorm statistics of the averaged weights
    logs = _validate(run, run.swa.module, "swa")
    run.choices["swa"] = {"epochs_averaged": run.swa.n_averaged, **logs}
    _save_weights(run, run.swa.module, run.paths.root / "checkpoints" / "swa.pt", state.epoch, logs)
    log("SWA: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
    return logs.get(f"{run.config.monitor_metric}_swa")


def _choose_weights(run: Any, state: Any, swa_metric: float | None) -> dict[str, Any]:
    from strop.train.metrics import is_better

    config = run.config
    candidates = [("raw", "best", state.best_metric, state.best_epoch)]
    if run.ema is not None:
        candidates.append(("ema", "best_ema", run.ema.best_metric, run.ema.best_epoch))
    if swa_metric is not None:
        candidates.append(("swa", "swa", swa_metric, state.epoch))
    chosen = candidates[0]
    for cand in candidates[1:]:
        if is_better(cand[2], chosen[2], config.monitor_direction):
            chosen = cand
    return {
        "used": chosen[0],
        "checkpoint": f"checkpoints/{chosen[1]}.pt",
        "monitor": config.monitor_metric,
        "candidates": {c[0]: {"metric": c[2], "epoch": c[3]} for c in candidates},
    }


def finish(run: Any, state: Any, log: Callable[[str], None]) -> None:
    """At the end of a run that was not interrupted: SWA's BatchNorm pass and validation, the
    choice of weights (``run.json`` ``weights``; ``strop eval/predict/export`` load them), and
    the diagnostics (rank 0)."""
    if state.interrupted or state.best_metric is None:
        return
    swa_metric = _finish_swa(run, state, log)
    if not run.ctx.is_main:
        return
    weights = _choose_weights(run, state, swa_metric)
    run.choices["weights"] = weights
    run.paths.choices.write_text(json.dumps(run.choices, indent=2))
    if len(weights["candidates"]) > 1:
        parts = ", ".join(
            f"{k} {v['metric']:.4f}"
            for k, v in weights["candidates"].items()
            if v["metric"] is not None
        )
        log(
            f"weights: {weights['used']} ({weights['monitor']}: {parts}) -> {weights['checkpoint']}"
        )
    if (
        run.val_images is None or run.config.task == "detection"
    ):  # detection: `strop eval` has the COCO table
        return
    from strop.train.checkpoint import load_checkpoint
    from strop.train.review import write_diagnostics
    from strop.train.setup import val_batch_size

    model = copy.deepcopy(run.model)
    model.load_state_dict(
        load_checkpoint(run.paths.root / weights["checkpoint"], map_location=run.device, mmap=True)[
            "model"
        ]
    )
    data, shown = run.val_images, None
    if run.val_features is not None and weights["used"] == "raw":
        # the head on its cached inputs: the frozen backbone's features do not change
        from strop.finetune import head_module

        model, data, shown = head_module(model), run.val_features, run.val_images
    files = write_diagnostics(
        model,
        data,
        run.task,
        run.classes,
        run.paths.root / "diagnostics",
        device=run.device,
        batch_size=val_batch_size(run.config),
        amp=run.amp,
        shown=shown,
    )
    log("diagnostics: " + ", ".join(str(f) for f in files))
