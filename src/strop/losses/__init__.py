"""Loss functions done right: pure functions plus thin ``nn.Module`` wrappers.

======================  =====================  ======================================================
function                module                 what
======================  =====================  ======================================================
``mse_loss``            ``MSELoss``            true-mean MSE; array-likes OK
``dice_loss``           ``DiceLoss``           soft Dice, binary / multiclass / multilabel
``jaccard_loss``        ``JaccardLoss``        soft IoU
``tversky_loss``        ``TverskyLoss``        Tversky; ``gamma != 1`` is focal-Tversky
``dice_bce_loss``       ``DiceBCELoss``        BCE with logits + Dice (autocast-safe)
``focal_loss``          ``FocalLoss``          per-element focal loss (Lin et al. 2017)
``lovasz_loss``         ``LovaszLoss``         Lovász hinge / Lovász-softmax
``box_iou``             —                      pairwise IoU (``denominator="min"``: over the smaller box)
``box_iou_loss``        ``BoxIoULoss``         1 - IoU / GIoU / DIoU / CIoU, element-wise
``nms``                 —                      greedy NMS; ``denominator="min"``: over the smaller box
``batched_nms``         —                      NMS per category
``cross_entropy_loss``  ``CrossEntropyLoss``   ``F.cross_entropy`` with validation
``bce_loss``            ``BCEWithLogitsLoss``  ``F.binary_cross_entropy_with_logits`` with validation
======================  =====================  ======================================================

Every function is named ``<name>_loss``; ``cross_entropy`` and ``bce`` remain as aliases of
``cross_entropy_loss`` and ``bce_loss``. In configs the registry names (``"bce"``,
``"cross_entropy"``, ``"dice"`` ...) and their aliases (``"bce_loss"``, ``"dice_loss"`` ...) all work.

``build(spec)`` makes a loss from a config (``"dice+bce"``, ``{"dice": 1, "focal": 0.5}``).
Value checks that force a device sync can be switched off: ``set_value_checks(False)`` or
``with value_checks(False): ...``. See docs/losses.md.
"""

from __future__ import annotations

from strop.losses._prepare import set_value_checks, value_checks, value_checks_enabled
from strop.losses.boxes import box_iou, box_iou_loss
from strop.losses.classification import (
    bce,
    bce_loss,
    cross_entropy,
    cross_entropy_loss,
    focal_loss,
    mse_loss,
)
from strop.losses.lovasz import lovasz_loss
from strop.losses.modules import (
    BCEWithLogitsLoss,
    BoxIoULoss,
    CrossEntropyLoss,
    DiceBCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszLoss,
    MSELoss,
    TverskyLoss,
)
from strop.losses.nms import batched_nms, nms
from strop.losses.registry import LOSSES, CombinedLoss, build
from strop.losses.segmentation import dice_bce_loss, dice_loss, jaccard_loss, tversky_loss

__all__ = [
    "LOSSES",
    "BCEWithLogitsLoss",
    "BoxIoULoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceBCELoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LovaszLoss",
    "MSELoss",
    "TverskyLoss",
    "batched_nms",
    "bce",
    "bce_loss",
    "box_iou",
    "box_iou_loss",
    "build",
    "cross_entropy",
    "cross_entropy_loss",
    "dice_bce_loss",
    "dice_loss",
    "focal_loss",
    "jaccard_loss",
    "lovasz_loss",
    "mse_loss",
    "nms",
    "set_value_checks",
    "tversky_loss",
    "value_checks",
    "value_checks_enabled",
]
