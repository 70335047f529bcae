"""Look, don't read: the figures and tables that show what a trained model gets wrong.

Classification: a confusion-matrix PNG and a per-class precision / recall / F1 table
(scikit-learn's ``confusion_matrix`` and ``classification_report``), and a "top losses" grid of
the validation images with the largest loss (label, prediction, its probability, the loss),
as fastai's ``plot_top_losses``. Segmentation: a per-class IoU / Dice table from the pixel
confusion matrix and an image / target / prediction overlay grid.

matplotlib is imported inside the functions and used only through ``matplotlib.figure.Figure``
(no pyplot, no backend switch); every plot returns its figure and writes a PNG when given a path.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from strop._checks import check_positive, fail

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "classification_table",
    "pixel_confusion",
    "plot_confusion_matrix",
    "plot_segmentation_grid",
    "plot_top_losses",
    "segmentation_table",
    "top_losses",
    "write_table",
]


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)


def _as_numpy(func: str, arg: str, value: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.ndim != 1:
        fail(func, f"{arg} must be 1-D class ids; got shape {arr.shape}")
    return arr.astype(np.int64)


def _check_names(func: str, class_names: Sequence[str], n: int | None = None) -> list[str]:
    names = [str(c) for c in class_names]
    if not names or (n is not None and len(names) != n):
        fail(
            func,
            f"class_names must name the {n if n is not None else ''} classes; got {len(names)}",
        )
    return names


def plot_confusion_matrix(
    y_true: Sequence[int] | Tensor,
    y_pred: Sequence[int] | Tensor,
    class_names: Sequence[str],
    path: str | Path | None = None,
    *,
    normalize: str | None = None,
) -> Figure:
    """The confusion matrix (rows: true class, columns: predicted) with each cell's count.

    ``normalize`` is scikit-learn's (``None``, ``"true"``, ``"pred"``, ``"all"``); the matrix is
    ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(C), normalize=normalize)``.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    func = "plot_confusion_matrix"
    names = _check_names(func, class_names)
    t, p = _as_numpy(func, "y_true", y_true), _as_numpy(func, "y_pred", y_pred)
    if t.shape != p.shape:
        fail(
            func, f"y_true and y_pred must have the same length; got {t.shape[0]} and {p.shape[0]}"
        )
    cm = confusion_matrix(t, p, labels=list(range(len(names))), normalize=normalize)
    # the figure grows around the matrix by the room its labels need (~0.075 in a character at
    # 10 pt; the x labels are turned 45°), instead of a layout solver, which cost 40% of the figure
    side = max(3.0, 0.5 * len(names) + 1.5)
    text = 0.075 * max(len(n) for n in names)
    left, bottom, right, top = 0.65 + text, 0.6 + 0.75 * text, 0.2, 0.45
    width, height = left + side + right, bottom + side + top
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{cm[i, j]:d}" if normalize is None else f"{cm[i, j]:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if top and cm[i, j] > top / 2 else "black",
            )
    ax.set_title(f"Confusion matrix ({int(t.size)} samples)")
    _save(fig, path)
    return fig


def classification_table(
    y_true: Sequence[int] | Tensor, y_pred: Sequence[int] | Tensor, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per-class precision / recall / F1 / support rows, then ``accuracy``, ``macro avg`` and
    ``weighted avg`` — ``sklearn.metrics.classification_report(output_dict=True,
    zero_division=0)`` as a list of rows ``{"class", "precision", "recall", "f1", "support"}``."""
    from sklearn.metrics import classification_report

    func = "classification_table"
    names = _check_names(func, class_names)
    t, p = _as_numpy(func, "y_true", y_true), _as_numpy(func, "y_pred", y_pred)
    report = classification_report(
        t, p, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
    )
    rows = []
    for key in [*names, "macro avg", "weighted avg"]:
        r = report[key]
        rows.append(
            {
                "class": key,
                "precision": r["precision"],
                "recall": r["recall"],
                "f1": r["f1-score"],
                "support": int(r["support"]),
            }
        )
    accuracy = report.get("accuracy", report.get("micro avg", {}).get("f1-score"))
    rows.insert(
        len(names),
        {
            "class": "accuracy",
            "precision": None,
            "recall": None,
            "f1": accuracy,
            "support": int(t.size),
        },
    )
    return rows


def write_table(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV (``.csv``) or a Markdown table (``.md``); floats with 4 decimals."""
    path = Path(path)
    if path.suffix not in (".csv", ".md"):
        fail("write_table", f"path must end in .csv or .md; got {str(path)!r}")
    if not rows:
        fail("write_table", "rows is empty")
    keys = list(rows[0])

    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(keys)
            writer.writerows([[cell(r[k]) for k in keys] for r in rows])
    else:
        lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
        lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


def top_losses(logits: Tensor, targets: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` samples with the largest cross-entropy, largest first: ``(indices, losses)``.

    Args:
        logits (Tensor[N, C]): model outputs. targets (Tensor[N]): class ids.
    """
    check_positive("top_losses", "k", k, integer=True)
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        fail(
            "top_losses",
            f"logits must be (N, C) and targets (N,); got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}",
        )
    losses = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    values, indices = losses.topk(min(k, losses.numel()))
    return indices, values


def _to_display(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    x = image.detach().float().cpu()
    x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_top_losses(
    images: Tensor,
    logits: Tensor,
    targets: Tensor,
    class_names: Sequence[str],
    path: str | Path | None = None,
    *,
    k: int = 9,
    ncols: int = 3,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Figure:
    """A grid of the ``k`` images with the largest loss, each titled like fastai's
    ``plot_top_losses``: ``"predicted / actual / loss / probability of the prediction"``.

    Args:
        images (Tensor[N, 3, H, W]): the normalised inputs (un-normalised with ``mean``/``std``).
        logits (Tensor[N, C]), targets (Tensor[N]): outputs and labels of the same samples.
    """
    from matplotlib.figure import Figure

    func = "plot_top_losses"
    names = _check_names(func, class_names, logits.shape[1] if logits.dim() == 2 else None)
    if images.dim() != 4 or images.shape[0] != logits.shape[0]:
        fail(
            func, f"images must be (N, C, H, W) with N={logits.shape[0]}; got {tuple(images.shape)}"
        )
    idx, losses = top_losses(logits, targets, k)
    probs = logits.float().softmax(1)
    rows = -(-len(idx) // ncols)
    # one axes showing torchvision's make_grid of the images, a caption above each tile: a
    # figure of k axes cost twice as much (each Axes builds its own ticks, spines and layout)
    from torchvision.utils import make_grid

    h, w = images.shape[-2:]
    pad = max(2, round(0.06 * max(h, w)))
    shown = torch.stack([torch.from_numpy(_to_display(images[i], mean, std)) for i in idx.tolist()])
    grid = make_grid(shown.permute(0, 3, 1, 2), nrow=ncols, padding=pad, pad_value=1.0)
    fig = Figure(figsize=(3 * ncols, 3.2 * rows))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.6 / (3.2 * rows)))
    ax.axis("off")
    # an image smaller than its 3-inch tile is shown pixel for pixel ("nearest"; matplotlib's
    # resampling filter cost half the figure on 16-px images), a larger one is filtered
    small = max(h, w) <= 3 * 120
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest" if small else "antialiased")
    for n, (i, loss) in enumerate(zip(idx.tolist(), losses.tolist(), strict=True)):
        pred = int(probs[i].argmax())
        r, c = divmod(n, ncols)
        # pixel centres are at integers: a tile's top edge is half a pixel above its first row
        ax.annotate(
            f"{names[pred]} / {names[int(targets[i])]} / {loss:.2f} / {probs[i, pred]:.2f}",
            (pad + c * (w + pad) + (w - 1) / 2, pad + r * (h + pad) - 0.5),
            xytext=(0, 1.5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    fig.suptitle("prediction / actual / loss / probability")
    _save(fig, path)
    return fig


def pixel_confusion(
    pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int | None = 255
) -> Tensor:
    """The ``(C, C)`` pixel confusion matrix (rows: target, columns: prediction), int64.

    Args:
        pred (Tensor[N, H, W]): predicted class ids. target (Tensor[N, H, W]): true class ids;
            pixels equal to ``ignore_index`` are left out.
    """
    func = "pixel_confusion"
    check_positive(func, "num_classes", num_classes, integer=True)
    if pred.shape != target.shape:
        fail(
            func,
            f"pred and target must have the same shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}",
        )
    t, p = target.flatten().long(), pred.flatten().long()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    if t.numel() and (
        int(t.min()) < 0
        or int(t.max()) >= num_classes
        or int(p.min()) < 0
        or int(p.max()) >= num_classes
    ):
        fail(func, f"class ids must be in [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(
        num_classes, num_classes
    )


def segmentation_table(confusion: Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-class ``IoU = TP / (TP + FP + FN)`` and ``Dice = 2TP / (2TP + FP + FN)`` from a pixel
    confusion matrix, then their means over the classes present (in target or prediction).

    A class absent from both target and prediction has IoU/Dice ``None`` (undefined) and is left
    out of the means.
    """
    names = _check_names("segmentation_table", class_names, confusion.shape[0])
    cm = confusion.double()
    tp = cm.diag()
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    rows, ious, dices = [], [], []
    for c, name in enumerate(names):
        denom = tp[c] + fp[c] + fn[c]
        iou = float(tp[c] / denom) if denom > 0 else None
        dice = float(2 * tp[c] / (denom + tp[c])) if denom > 0 else None
        if iou is not None:
            ious.append(iou)
            dices.append(dice)
        rows.append({"class": name, "iou": iou, "dice": dice, "pixels": int(cm[c].sum())})
    rows.append(
        {
            "class": "mean",
            "iou": float(np.mean(ious)) if ious else None,
            "dice": float(np.mean(dices)) if dices else None,
            "pixels": int(cm.sum()),
        }
    )
    return rows


def _palette(num_classes: int) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["tab10" if num_classes <= 10 else "tab20"](np.arange(num_classes) % 20)[:, :3]


def plot_segmentation_grid(
    images: Tensor,
    targets: Tensor,
    preds: Tensor,
    class_names: Sequence[str],
    path: str | Path | None = None,
    *,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Figure:
    """One row per sample: the image, the target overlaid, the prediction overlaid (each class
    its colour at ``alpha``; ignored pixels left uncoloured).

    Args:
        images (Tensor[N, 3, H, W]): normalised inputs. targets, preds (Tensor[N, H, W]): class ids.
    """
    from matplotlib.figure import Figure

    func = "plot_segmentation_grid"
    names = _check_names(func, class_names)
    if (
        images.dim() != 4
        or targets.shape != preds.shape
        or targets.shape != (images.shape[0], *images.shape[2:])
    ):
        fail(
            func,
            f"images must be (N, 3, H, W) and targets/preds (N, H, W); got {tuple(images.shape)}, "
            f"{tuple(targets.shape)}, {tuple(preds.shape)}",
        )
    colours = _palette(len(names))
    n = images.shape[0]
    fig = Figure(figsize=(9, 3 * n), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        base = _to_display(images[r], mean, std)
        for c, (title, ids) in enumerate(
            [("image", None), ("target", targets[r]), ("prediction", preds[r])]
        ):
            ax = axes[r, c]
            ax.axis("off")
            shown = base
            if ids is not None:
                m = ids.cpu().long().numpy()
                valid = (
                    (m >= 0) & (m < len(names))
                    if ignore_index is None
                    else (m != ignore_index) & (m < len(names))
                )
                overlay = base.copy()
                overlay[valid] = (1 - alpha) * base[valid] + alpha * colours[m[valid]]
                shown = overlay
            ax.imshow(shown)
            if r == 0:
                ax.set_title(title)
    _save(fig, path)
    return fig
