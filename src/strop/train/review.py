"""The diagnostics of a trained model over its validation images, written to a folder:

- classification: ``confusion_matrix.png``, ``per_class.csv`` / ``per_class.md`` (precision,
  recall, F1, support; scikit-learn) and ``top_losses.png`` (the images the model gets most
  wrong: prediction / actual / loss / probability);
- segmentation: ``per_class.csv`` / ``per_class.md`` (IoU, Dice, pixels) and
  ``overlays.png`` (image / target / prediction for the first images).

Used at the end of ``fit`` (with the weights ``run.json`` says are best) and by ``strop eval``.
The plotting and tables are :mod:`strop.train.diagnostics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from strop.train import diagnostics as dg

__all__ = ["collect_outputs", "write_diagnostics"]


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device,
    batch_size: int,
    amp: Any = None,
    keep_images: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(outputs, targets, images)`` of ``model`` (eval mode) over ``dataset`` in order, on the
    CPU; ``images`` holds the first ``keep_images`` inputs (all when None)."""
    from torch.utils.data import DataLoader

    from strop.finetune.heads import split_outputs

    was = model.training
    model.eval().to(device)
    outs, ys, xs = [], [], []
    kept = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            ctx = amp.autocast() if amp is not None else torch.autocast(device.type, enabled=False)
            with ctx:
                main, _ = split_outputs(model(x.to(device)))
            outs.append(main.float().cpu())
            ys.append(torch.as_tensor(y))
            if keep_images is None or kept < keep_images:
                xs.append(x)
                kept += len(x)
    finally:
        model.train(was)
    return torch.cat(outs), torch.cat(ys), torch.cat(xs) if xs else torch.empty(0)


def write_diagnostics(
    model: nn.Module,
    dataset: Any,
    task: Any,
    classes: list[str] | None,
    out_dir: str | Path,
    *,
    device: torch.device,
    batch_size: int = 32,
    amp: Any = None,
    k: int = 9,
    shown: Any = None,
) -> list[Path]:
    """Write the task's diagnostics (module docstring) to ``out_dir``; returns the files.

    ``shown``: the dataset whose images the figures show, item for item the same samples as
    ``dataset`` (default: ``dataset`` itself). The feature cache passes the head as ``model``,
    its cached inputs as ``dataset`` and the validation images as ``shown``: the frozen backbone
    does not run again.
    """
    out = Path(out_dir)
    shown = dataset if shown is None else shown
    # the datasets' normalisation, to show the images; a plain TensorDataset has none (ImageNet's)
    stats = {k: getattr(shown, k) for k in ("mean", "std") if hasattr(shown, k)}
    if task.name == "classification":
        logits, y, _ = collect_outputs(
            model, dataset, device=device, batch_size=batch_size, amp=amp, keep_images=0
        )
        names = classes or [str(i) for i in range(task.num_classes)]
        pred = logits.argmax(1)
        dg.plot_confusion_matrix(y, pred, names, out / "confusion_matrix.png")
        rows = dg.classification_table(y, pred, names)
        # only the k images shown are read back (not every validation image kept in memory)
        idx, _ = dg.top_losses(logits, y, k)
        images = torch.stack([torch.as_tensor(shown[i][0]) for i in idx.tolist()])
        dg.plot_top_losses(images, logits[idx], y[idx], names, out / "top_losses.png", k=k, **stats)
        files = [out / "confusion_matrix.png", out / "top_losses.png"]
    else:
        logits, y, images = collect_outputs(
            model, dataset, device=device, batch_size=batch_size, amp=amp, keep_images=4
        )
        n = task.num_classes
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        ignore = getattr(dataset, "ignore_index", None)
        names = [str(i) for i in range(n)]
        rows = dg.segmentation_table(dg.pixel_confusion(pred, y, n, ignore_index=ignore), names)
        m = min(4, len(images))
        dg.plot_segmentation_grid(
            images[:m], y[:m], pred[:m], names, out / "overlays.png", ignore_index=ignore, **stats
        )
        files = [out / "overlays.png"]
    files = [
        dg.write_table(rows, out / "per_class.csv"),
        dg.write_table(rows, out / "per_class.md"),
        *files,
    ]
    return files
