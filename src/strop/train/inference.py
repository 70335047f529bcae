"""Using a finished run: evaluate it, predict with it, export its weights, range-test its config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from strop.train.checkpoint import load_checkpoint
from strop.train.config import Config, config_from_dict
from strop.train.fsdp import require_full_model
from strop.train.setup import build_parts, load_datasets, resolve_device, val_batch_size
from strop.train.tasks import build_task

__all__ = [
    "checkpoint_path",
    "evaluate_run",
    "export_weights",
    "load_run_model",
    "lr_find_config",
    "predict_images",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def checkpoint_path(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file ``checkpoint`` names: ``"best"`` is the weights ``run.json`` says
    validated best (``weights.checkpoint``: the raw best, the EMA's best or SWA's), ``"last"``
    and any other name the file ``checkpoints/<name>.pt``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if checkpoint == "best":
        choices = run_dir / "run.json"
        weights = json.loads(choices.read_text()).get("weights") if choices.is_file() else None
        if weights and (run_dir / weights["checkpoint"]).is_file():
            return run_dir / weights["checkpoint"]
    return run_dir / "checkpoints" / f"{checkpoint}.pt"


def load_run_model(
    run_dir: str | Path, checkpoint: str = "best"
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """``(model in eval mode, config, checkpoint dict)`` from a run folder (see
    :func:`checkpoint_path` for which weights ``"best"`` is)."""
    from strop import finetune

    path = checkpoint_path(run_dir, checkpoint)
    ck = load_checkpoint(path)
    config = config_from_dict(ck["config"], source=str(path))
    if config.task == "detection":
        from strop.train.detection_predict import load_detector_run

        return load_detector_run(run_dir, checkpoint)
    task = build_task(config.task, ck["num_classes"])
    model = finetune.build_model(config.model.name, num_classes=task.out_channels, weights=None)
    model.load_state_dict(require_full_model(ck, path))
    return model.eval(), config, ck


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    tta: bool = False,
    diagnostics: str | Path | None = None,
) -> dict[str, float]:
    """Validation metrics of a run's checkpoint (the same split the run validated on).

    ``tta``: also the metrics with test-time augmentation (``*_tta``) and the gain over the plain
    model (``*_tta_gain``: TTA minus plain), see :func:`strop.train.tta_run.tta_views`.
    ``diagnostics``: a folder for the confusion matrix / per-class table / top losses (or the
    segmentation table and overlays) of this checkpoint (:mod:`strop.train.review`).
    """
    from strop.losses import build
    from strop.precision import resolve
    from strop.train.loop import evaluate
    from strop.train.recipe_run import loss_spec
    from strop.train.tta_run import TTAModel, tta_views

    model, config, _ = load_run_model(run_dir, checkpoint)
    if config.task == "detection":
        from strop.train.detection_predict import evaluate_detector_run

        return evaluate_detector_run(run_dir, checkpoint=checkpoint, loaded=(model, config))
    device = resolve_device(config.device)
    train_ds, val_ds, classes, n = load_datasets(config)
    loader = _loader(config, val_ds, device, shuffle=False, batch_size=val_batch_size(config))
    task = build_task(config.task, n)
    loss_fn = build(loss_spec(config, train_ds))
    precision = resolve(config.precision, device)
    model = model.to(device)
    metrics = evaluate(model, loss_fn, loader, task=task, precision=precision, device=device)
    if tta:
        tta_model = TTAModel(model, **tta_views(config, task))
        with_tta = evaluate(
            tta_model, loss_fn, loader, task=task, precision=precision, device=device
        )
        for key, value in with_tta.items():
            metrics[f"{key}_tta"] = value
            metrics[f"{key}_tta_gain"] = value - metrics[key]
    if diagnostics is not None:
        from strop.precision import MixedPrecision
        from strop.train.review import write_diagnostics

        write_diagnostics(
            model,
            val_ds,
            task,
            classes,
            diagnostics,
            device=device,
            batch_size=val_batch_size(config),
            amp=MixedPrecision(precision),
        )
    return metrics


def _loader(
    config: Config,
    dataset: Any,
    device: torch.device,
    *,
    shuffle: bool,
    batch_size: int | None = None,
) -> Any:
    from strop.data import make_loader

    d = config.data
    return make_loader(dataset, batch_size=batch_size or d.batch_size, shuffle=shuffle, seed=config.seed,
                       num_workers=d.num_workers, device=device)  # fmt: skip


def expand_images(paths: list[str]) -> list[Path]:
    """Image files, folders expanded to the images in them (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"predict: image not found: {p}")
    return out


@torch.no_grad()
def predict_images(
    run_dir: str | Path, images: list[str], *, checkpoint: str = "best", tta: bool = False
) -> list[dict[str, Any]]:
    """``[{"path", "class", "probability"}]`` for each image (classification runs); ``tta``
    averages the probabilities over the flipped views (:func:`strop.train.tta_run.tta_views`)."""
    from strop.data import load_image_tensor
    from strop.train.tta import tta_predict
    from strop.train.tta_run import tta_views

    model, config, ck = load_run_model(run_dir, checkpoint)
    if config.task != "classification":
        raise ValueError(
            f"predict: run {run_dir} is a {config.task} run; predict supports classification"
        )
    classes = ck["classes"]
    rows = []
    for path in expand_images(list(images)):
        x = load_image_tensor(path, image_size=config.data.image_size)
        if tta:
            probs = tta_predict(
                model, x[None], **tta_views(config, build_task(config.task, len(classes)))
            )[0]
        else:
            probs = torch.softmax(model(x[None]).float(), dim=1)[0]
        p, i = probs.max(0)
        rows.append(
            {"path": str(path), "class": classes[int(i)], "probability": round(float(p), 6)}
        )
    return rows


def export_weights(
    run_dir: str | Path,
    *,
    fmt: str = "safetensors",
    out: str | Path | None = None,
    checkpoint: str = "best",
) -> Path:
    """Write the model's weights alone; safetensors is recommended (loading it runs no code)."""
    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    ck = load_checkpoint(path)
    state = {k: v.contiguous() for k, v in require_full_model(ck, path).items()}
    path = Path(out) if out else run_dir / f"model.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(
            state,
            str(path),
            metadata={
                "model": ck["config"]["model"]["name"],
                "num_classes": str(ck["num_classes"]),
            },
        )
    elif fmt == "pt":
        torch.save(state, path)
    else:
        raise ValueError(f"export: format must be 'safetensors' or 'pt'; got {fmt!r}")
    return path


def lr_find_config(
    config: Config,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    out: str | Path | None = None,
) -> tuple[Any, Path]:
    """Run :func:`strop.schedules.lr_find` on the model, data, loss and optimizer of ``config``."""
    from strop.plots import plot_lr_find
    from strop.precision import convolutions_frozen, resolve, resolve_memory_format
    from strop.schedules import lr_find

    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    precision = resolve(config.precision, device)
    train_ds, _, _, n = load_datasets(config)
    task = build_task(config.task, n)
    model, loss_fn, optimizer = build_parts(config, n, train_ds)
    # as fit() chooses it (setup.build_run): the range test trains what the first epoch trains
    memory_format = resolve_memory_format(
        config.memory_format,
        device,
        precision,
        forward_only=convolutions_frozen(model),
        image_size=config.data.image_size,
    )
    model = model.to(device, memory_format=memory_format)
    loader = _loader(config, train_ds, device, shuffle=True)

    def forward_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        # the training forward pass of fit(): the task moves the batch and weights aux heads
        batch = task.to_device(batch, device, memory_format)
        return task.forward_loss(model, loss_fn, batch, config.model.aux_weight)[0]

    result = lr_find(
        model,
        loader,
        loss_fn,
        optimizer,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        mode=mode,
        precision=precision,
        accumulation_steps=config.accumulation_steps,
        device=device,
        forward_loss=forward_loss,
    )
    path = Path(out) if out else Path(config.output) / "lr_find.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, path)
    return result, path
