"""Test-time augmentation for a finished run: which views (:func:`tta_views`) and the averaged
model as a module (:class:`TTAModel`), so that ``strop eval --tta`` scores it with the same
metrics and loss as the plain model and reports the gain."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from strop._checks import fail
from strop.train.tta import tta_predict

__all__ = ["SEGMENTATION_SCALES", "TTAModel", "tta_views"]

#: input scales of segmentation TTA (2x keeps the size a multiple of any encoder stride)
SEGMENTATION_SCALES = (1.0, 2.0)


def tta_views(config: Any, task: Any) -> dict[str, Any]:
    """``tta_predict`` options for a run: a horizontal flip (classification), and flip + scales
    ``SEGMENTATION_SCALES`` (segmentation); sigmoid for a one-channel binary output."""
    if not config.data.hflip and task.name == "classification":
        fail(
            "--tta",
            "the run was trained with data.hflip: false (mirroring changes the class), "
            "so flip TTA would score images the model never learned",
            hint="evaluate without --tta",
        )
    flips = ("horizontal",) if config.data.hflip else ()
    scales = SEGMENTATION_SCALES if task.name == "segmentation" else (1.0,)
    activation = "sigmoid" if task.out_channels == 1 else "softmax"
    return {"flips": flips, "scales": scales, "activation": activation}


class TTAModel(nn.Module):
    """``model`` averaged over the TTA views, returning the log of the mean probabilities
    (softmax) or their logit (sigmoid): a loss or argmax over them scores the averaged
    prediction, since ``softmax(log p) = p`` and ``sigmoid(logit p) = p``."""

    def __init__(self, model: nn.Module, *, flips: Any, scales: Any, activation: str) -> None:
        super().__init__()
        self.model = model
        self.options = {"flips": tuple(flips), "scales": tuple(scales), "activation": activation}

    def forward(self, x: Tensor) -> Tensor:
        p = tta_predict(self.model, x, **self.options)
        if self.options["activation"] == "sigmoid":
            return torch.logit(p, eps=1e-6)
        return p.clamp_min(1e-12).log()
