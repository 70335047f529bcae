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

import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from strop.data.roots import resolve_root as bundled_root
from strop.train import callbacks as cb
from strop.train import fsdp, recipe_run
from strop.train.checkpoint import (
    CheckpointError,
    inline_frozen,
    load_checkpoint,
    save_checkpoint,
)
from strop.train.config import Config
from strop.train.distributed import DistContext, all_reduce_sum, init_from_env
from strop.train.loop import TrainState, current_lr, lowest_lr, train_one_epoch
from strop.train.loop import evaluate as evaluate_model
from strop.train.metrics import is_better
from strop.train.rundir import RunDir, read_metrics
from strop.train.runfolder import RunClaim, RunInUseError, claim_run_dir, elastic_restart
from strop.train.sampler import ResumableSampler
from strop.train.setup import Run, build_parts, build_run, build_schedule, resolve_device
from strop.train.signals import stop_on_signals
from strop.train.state import dump_state, restore_state, upgrade_checkpoint

__all__ = [
    "ResumableSampler",
    "RunResult",
    "build_engine_parts",
    "build_schedule",
    "bundled_root",
    "evaluate",
    "fit",
    "resolve_device",
]


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


def fit(
    config: Config,
    *,
    resume: bool = False,
    exist_ok: bool = False,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train as ``config`` says; returns a :class:`RunResult`. See the module docstring.

    The run folder is claimed first (:func:`claim_folder`): a new run never writes into a folder
    that holds another run (it goes to ``output-2``, ... unless ``exist_ok``), and the folder is
    locked for the whole of ``fit``. Under torchrun with restarts a restarted worker resumes from
    ``last.pt`` by itself.
    """
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    ctx, device = start_process(config)
    log = (log or _log_default) if ctx.is_main else _silent
    if resume and not RunDir(Path(config.output)).last.is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {RunDir(Path(config.output)).last}; start without --resume"
        )
    claim, config, resume = claim_folder(config, ctx, resume=resume, exist_ok=exist_ok, log=log)
    try:
        run = build_run(config, ctx, device, log)
        state = TrainState()
        if resume:
            restore(run, state, log)
        history = read_history(run, state) if resume else []
        cbs = [*_run_callbacks(run), *([run.early] if run.early is not None else []), *callbacks]
        train_epochs(run, state, cbs, history)
        finish(run, state, history, log)
    finally:
        claim.release()
    return RunResult(
        run_dir=run.paths.root,
        history=history,
        monitor=config.monitor_metric,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        seconds=time.perf_counter() - t0,
        interrupted=state.interrupted,
        choices=run.choices,
    )


def train_epochs(
    run: Run, state: TrainState, cbs: list[Any], history: list[dict[str, float]]
) -> None:
    """The epoch loop: train, validate, checkpoint, until the last epoch, a stop or a signal."""
    on_step = functools.partial(after_step, run, cbs=cbs)
    cb.call(cbs, "on_fit_start", state)
    try:
        with stop_on_signals(state):
            while state.epoch < run.config.epochs and not state.should_stop:
                epoch_t0 = time.perf_counter()
                train_logs = run_epoch(run, state, cbs, on_step)
                if train_logs is None:
                    break  # interrupted (a checkpoint was saved) or a callback stopped mid-epoch
                history.append(end_epoch(run, state, cbs, train_logs, epoch_t0))
    finally:
        cb.call(cbs, "on_fit_end", state)  # closes the CSV log even when training raised


def claim_folder(
    config: Config, ctx: DistContext, *, resume: bool, exist_ok: bool, log: Callable[[str], None]
) -> tuple[RunClaim | _NoClaim, Config, bool]:
    """Global rank 0 claims and locks the run folder (:func:`~strop.train.runfolder.claim_run_dir`)
    and tells the other ranks which one, before anything is written; returns ``(claim, config
    with output = that folder, resume)``. A worker that torchrun restarted resumes from
    ``last.pt`` by itself (or starts again in the same folder when none was saved yet)."""
    claim: RunClaim | _NoClaim = _NoClaim()
    message: list[Any] = [None, None, False]  # folder, refusal, restarted by torchrun
    failure: Exception | None = None
    if ctx.is_main:
        try:
            claim = _claim_with_retry(config.output, resume=resume, exist_ok=exist_ok)
            message = [str(claim.folder), None, claim.resumed_by_restart]
        except (RunInUseError, OSError) as exc:
            failure, message = exc, [None, str(exc), False]
    if ctx.enabled:  # every rank learns the folder (or the refusal) before any rank writes
        dist.broadcast_object_list(message, src=0)
    folder, refusal, restarted = message
    if failure is not None:
        raise failure
    if refusal is not None:
        raise RunInUseError(f"rank 0 could not claim the run folder: {refusal}")
    if isinstance(claim, RunClaim) and claim.note:
        log(claim.note)
    log(f"run folder: {folder}")
    if restarted:
        has_last = RunDir(Path(folder)).last.is_file()
        resume = resume or has_last
        log(
            f"restarted by torchrun (TORCHELASTIC_RESTART_COUNT={elastic_restart()[1]}): "
            + (
                "resuming from checkpoints/last.pt"
                if has_last
                else "no checkpoint yet, starting again"
            )
            + f" in {folder}"
        )
    if folder != config.output:
        config = config.model_copy(update={"output": folder})
    return claim, config, resume


def _claim_with_retry(output: str, *, resume: bool, exist_ok: bool) -> RunClaim:
    """:func:`claim_run_dir`; a restarted torchrun worker waits up to 30 s for the lock of its
    folder, which the previous attempt's rank 0 may still hold while torchrun stops it."""
    deadline = time.monotonic() + (30.0 if elastic_restart()[1] > 0 else 0.0)
    while True:
        try:
            return claim_run_dir(output, resume=resume, exist_ok=exist_ok)
        except RunInUseError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


class _NoClaim:
    """What ranks other than 0 hold: nothing to release."""

    def release(self) -> None:
        pass


def start_process(config: Config) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    device = resolve_device(config.device)
    ctx = init_from_env(device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


def run_epoch(run: Run, state: TrainState, cbs: list[Any], on_step: Any) -> dict[str, float] | None:
    """Train one epoch (or its rest, after a mid-epoch resume); None when it did not finish."""
    if run.unfreeze is not None and state.batch_in_epoch == 0:
        run.unfreeze.on_epoch_start(state.epoch)
        _record_trainable(run, state)
    recipe_run.on_epoch_start(run, state)
    run.sampler.set_position(state.epoch, state.batch_in_epoch)
    generator = getattr(run.loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(run.config.seed * 1_000_003 + state.epoch)
    cb.call(cbs, "on_epoch_start", state)
    train_logs = train_one_epoch(run, state, cbs, on_step=on_step)
    if state.interrupted or state.batch_in_epoch < run.batches_per_epoch:
        return None
    return train_logs


def evaluate(
    run: Run, loader: Any, *, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, float]:
    """Validation metrics of a built run over ``loader`` (see :func:`strop.train.loop.evaluate`)."""
    return evaluate_model(
        run.module,
        run.loss_fn,
        loader,
        task=run.task,
        precision=run.amp,
        device=run.device,
        memory_format=run.memory_format,
        reduce=reduce,
    )


def end_epoch(
    run: Run, state: TrainState, cbs: list[Any], train_logs: dict[str, float], t0: float
) -> dict[str, float]:
    """Validate, step the epoch schedule, keep the best, log, checkpoint; returns the history row."""
    config, ctx = run.config, run.ctx
    if ctx.enabled:  # each rank trained on its shard; log the whole epoch's numbers
        train_logs = _global_train_logs(state.epoch_sums, train_logs, ctx)
    val_logs = evaluate(
        run,
        run.val_loader,
        reduce=functools.partial(all_reduce_sum, ctx=ctx) if ctx.enabled else None,
    )
    val_logs.update(recipe_run.after_validation(run, state))  # EMA metrics; SWA averaging
    logs = {
        **train_logs,
        **val_logs,
        "lr": current_lr(run.optimizer),
        "lr_min": lowest_lr(run.optimizer),
    }
    if run.schedule is not None:
        run.schedule.on_epoch_end(logs.get(config.monitor_metric))
    logs["epoch_seconds"] = time.perf_counter() - t0
    logs["skipped_steps"] = float(state.skipped_steps)
    logs["nonfinite_batches"] = float(state.nonfinite_batches)
    # a NaN model is never saved as best, whatever its metric says
    is_best = is_better(
        logs.get(config.monitor_metric), state.best_metric, config.monitor_direction
    ) and _finite(run)
    if is_best:
        state.best_metric = float(logs[config.monitor_metric])
        state.best_epoch = state.epoch + 1
    cb.call(cbs, "on_epoch_end", state, logs)
    row = {"epoch": float(state.epoch + 1), **logs}
    state.epoch += 1
    state.batch_in_epoch = 0
    state.epoch_sums = {}
    if ctx.enabled:  # every rank follows rank 0's decision to stop
        state.should_stop = _any_rank(state.should_stop, ctx)
    # best before last: a crash between the two then redoes this epoch and rewrites best.pt,
    # instead of resuming past a best.pt that was never written
    weights = _model_state(run) if is_best else None  # fsdp: every rank gathers
    if is_best and ctx.is_main:
        save_checkpoint(
            {
                "model": weights,
                **run.metadata(),
                "epoch": state.epoch,
                "metrics": logs,
            },
            run.paths.best,
            # under the feature cache best.pt references the frozen backbone while training
            # (an improving epoch writes the head, not 45 MB); finish() makes it self-contained
            shared_model_keys=run.frozen_keys,
        )
    # the last epoch's last.pt of an fsdp run holds the full model too: eval/predict/export read it
    save_last(run, state, full_model=state.epoch >= config.epochs or state.should_stop)
    return row


def save_last(run: Run, state: TrainState, *, full_model: bool = False) -> None:
    """``last.pt``: every stateful part of the run. All ranks call it at the same step: it holds
    the epoch's train sums over all ranks (on resume rank 0 carries them, the others start at 0).
    Under fsdp every rank writes its shards (:func:`strop.train.fsdp.save_sharded`);
    ``full_model`` also puts the gathered model into ``last.pt`` (the end of an fsdp run)."""
    sums = state.epoch_sums
    if run.ctx.enabled and sums:
        keys = sorted(sums)
        total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), run.ctx)
        sums = dict(zip(keys, total.tolist(), strict=True))
    if run.sharded:
        payload = {**dump_state(fsdp.stateful_rest(run.stateful(state))), **run.metadata()}
        payload["state"]["epoch_sums"] = dict(sums)
        fsdp.save_sharded(
            run.model,
            run.optimizer,
            payload,
            run.paths.last,
            rank=run.ctx.rank,
            full_model=full_model,
        )
    elif run.ctx.is_main:
        payload = {**dump_state(run.stateful(state)), **run.metadata()}
        payload["state"]["epoch_sums"] = dict(sums)
        save_checkpoint(payload, run.paths.last, shared_model_keys=run.frozen_keys)


def after_step(run: Run, state: TrainState, cbs: Sequence[Any] = ()) -> None:
    """After each optimizer step: agree on a stop across ranks; save every N steps or on a signal
    (``on_checkpoint`` first: the CSV log flushes the rows the checkpoint covers)."""
    recipe_run.after_step(run)  # EMA update, before any checkpoint of this step
    if run.ctx.enabled:
        # a signal may reach one rank first: all ranks stop at the same step or DDP would hang
        stop = _any_rank(bool(state.interrupted), run.ctx)
        if stop and not state.interrupted:
            state.interrupted = "SIGTERM (on another rank)"
        state.should_stop = state.should_stop or stop
    n = run.config.checkpoint_every_steps
    if state.interrupted or (n and state.step % n == 0):
        cb.call(list(cbs), "on_checkpoint", state)
        save_last(run, state)


def restore(run: Run, state: TrainState, log: Callable[[str], None]) -> None:
    """Continue from ``last.pt``: every stateful part restored in place, in order."""
    config, last = run.config, run.paths.last
    ck = upgrade_checkpoint(load_checkpoint(last, map_location=run.device))
    old = ck["config"]
    if ck["state"]["batch_in_epoch"] and (old["data"]["batch_size"], old["accumulation_steps"]) != (
        config.data.batch_size,
        config.accumulation_steps,
    ):
        raise ValueError(
            "--resume: data.batch_size/accumulation_steps changed since the mid-epoch checkpoint "
            f"{last}; resume with the old values or from an epoch-end checkpoint"
        )
    objects = run.stateful(state)
    if "sharded" in ck:  # an fsdp checkpoint: model + optimizer from its DCP shards
        fsdp.load_sharded(run.model, run.optimizer, ck, last)
        objects = fsdp.stateful_rest(objects)
    restore_state(objects, ck)
    if (
        run.schedule is not None
        and ck.get("scheduler") is not None
        and old["epochs"] != config.epochs
    ):
        # a fixed-horizon schedule (cosine, onecycle) is re-planned for the new length
        run.schedule.replan(epochs=config.epochs, steps_per_epoch=run.steps_per_epoch)
        log(f"schedule re-planned for {config.epochs} epochs (was {old['epochs']})")
    if not run.ctx.is_main:
        state.epoch_sums = {}  # rank 0 carries the whole epoch's sums (see save_last)
    # an interrupted run continues; one that early stopping ended stays ended
    state.should_stop = run.early is not None and run.early.stopped and not state.interrupted
    state.interrupted = None
    log(
        f"resumed from {last} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.step}"
    )


def read_history(run: Run, state: TrainState) -> list[dict[str, float]]:
    """The epochs a resumed run already logged (up to the checkpoint's epoch)."""
    if not run.ctx.is_main:
        return []
    epochs, _ = read_metrics(run.paths.metrics)
    return [row for row in epochs if row.get("epoch", 0) <= state.epoch]


def finish(
    run: Run, state: TrainState, history: list[dict[str, float]], log: Callable[[str], None]
) -> None:
    """best.pt self-contained, plots, and one line for each thing the user should know about
    the run's end."""
    if run.ctx.is_main and not state.interrupted:
        # best.pt is what users copy and load elsewhere: the whole model in the one file (also
        # when this run did not cache but resumed one that did). Not on a signal: the grace
        # period is for last.pt, and the resumed run makes best.pt whole at its end
        try:
            inline_frozen(run.paths.best, run.model.state_dict(keep_vars=True))
        except CheckpointError as exc:  # the trained checkpoints are intact: say so, go on
            log(f"best.pt: left referencing its frozen tensors ({exc}); load_checkpoint reads it")
    recipe_run.finish(run, state, log)  # SWA batchnorm, the weights to use, diagnostics
    if run.ctx.is_main and history:
        from strop.train.report import plot_run

        plot_run(run.paths.root)
    if state.interrupted:
        log(
            f"interrupted by {state.interrupted}: state saved to {run.paths.last}; continue with --resume"
        )
    if state.skipped_steps:
        log(f"fp16 scaler skipped {state.skipped_steps} optimizer step(s) (inf/NaN gradients)")
    if state.nonfinite_batches:
        log(f"skipped {state.nonfinite_batches} batch(es) with a non-finite loss or gradient")


def _run_callbacks(run: Run) -> list[Any]:
    """Rank 0 writes the run folder: config.yaml, run.json, metrics.csv, progress, TensorBoard."""
    if not run.ctx.is_main:
        return []
    paths = run.paths
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
    paths.choices.write_text(json.dumps(run.choices, indent=2))
    # a combined loss ({dice: 1, bce: 1}) logs each part per step: loss_dice, loss_bce
    names = (
        run.task.metric_names()
        + [f"loss_{name}" for name in getattr(run.loss_fn, "losses", {})]
        + recipe_run.extra_metric_names(run)
    )
    out: list[Any] = [
        cb.CSVLogger(paths.metrics, names),
        cb.ProgressBar(run.config.epochs, run.batches_per_epoch, enabled=run.config.progress),
    ]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return out
    return [*out, cb.TensorBoardLogger(paths.root / "tensorboard")]


def build_engine_parts(
    config: Config, num_classes: int, device: Any = None, precision: Any = None
) -> tuple[nn.Module, Any, Any]:
    """Old name of :func:`strop.train.setup.build_parts` (``device``/``precision`` are ignored)."""
    return build_parts(config, num_classes)


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr)


def _silent(msg: str) -> None:
    pass


def _global_train_logs(
    sums: dict[str, float], logs: dict[str, float], ctx: DistContext
) -> dict[str, float]:
    """``train_loss`` (and ``train_accuracy``) over every rank's images, not rank 0's alone."""
    t = torch.tensor(
        [sums.get("loss", 0.0), sums.get("correct", 0.0), sums.get("count", 0.0)],
        dtype=torch.float64,
    )
    loss, correct, count = all_reduce_sum(t, ctx).tolist()
    out = {"train_loss": loss / max(count, 1.0)}
    if "train_accuracy" in logs:
        out["train_accuracy"] = correct / max(count, 1.0)
    return out


def _record_trainable(run: Run, state: TrainState) -> None:
    """Gradual unfreezing changes what trains: ``run.json`` keeps the trainable count per epoch
    where it changed (``trainable_params`` is the first epoch's)."""
    count = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    by_epoch = run.choices.setdefault("trainable_params_by_epoch", {})
    if by_epoch and list(by_epoch.values())[-1] == count:
        return
    by_epoch[str(state.epoch + 1)] = count
    if run.ctx.is_main and run.paths.root.is_dir() and (run.paths.root / "run.json").exists():
        (run.paths.root / "run.json").write_text(json.dumps(run.choices, indent=2))


def _any_rank(flag: bool, ctx: DistContext) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t, ctx).item() > 0)


def _finite(run: Run) -> bool:
    if run.sharded:  # each rank checks its shards; all agree
        return fsdp.sharded_finite(run.model, functools.partial(all_reduce_sum, ctx=run.ctx))
    return all(
        bool(torch.isfinite(t).all())
        for t in run.model.state_dict().values()
        if t.is_floating_point()
    )


def _model_state(run: Run) -> dict[str, torch.Tensor]:
    """The whole model's state dict (under fsdp gathered on rank 0; every rank calls it)."""
    return fsdp.full_model_state(run.model) if run.sharded else run.model.state_dict()
