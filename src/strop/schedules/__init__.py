"""Learning-rate schedules: torch's ten by name, warmup in front of any, transformers-style
schedules, a preview, and the LR range test.

``build(spec, optimizer, epochs=..., steps_per_epoch=...)`` returns a :class:`StropScheduler`
that the trainer drives with ``on_optimizer_step()`` and ``on_epoch_end(metric)``. See
docs/schedules.md.
"""

from strop.schedules.custom import (
    WSDLR,
    ExponentialWarmupLR,
    InverseSqrtLR,
    PolyLR,
    StepDecayLR,
    WarmupConstantLR,
    WarmupCosineLR,
    WarmupLinearLR,
)
from strop.schedules.preview import preview
from strop.schedules.range_test import LRFindResult, lr_find
from strop.schedules.scheduler import StropScheduler, build, names

__all__ = [
    "WSDLR",
    "ExponentialWarmupLR",
    "InverseSqrtLR",
    "LRFindResult",
    "PolyLR",
    "StepDecayLR",
    "StropScheduler",
    "WarmupConstantLR",
    "WarmupCosineLR",
    "WarmupLinearLR",
    "build",
    "lr_find",
    "names",
    "preview",
]
