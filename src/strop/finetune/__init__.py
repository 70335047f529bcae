"""Fine-tuning pretrained models: model zoo, weights, heads, freezing, discriminative LRs.

The transfer-learning steps (build, load weights, new head, freeze) as one API for every
torchvision classification (and semantic-segmentation) model::

    model = build_model("resnet18", num_classes=4, weights="DEFAULT", freeze="backbone")
    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, weight_decay=0.05))

See docs/finetune.md for the steps side by side with plain torchvision code.
"""

from __future__ import annotations

from strop.finetune.build import build_model
from strop.finetune.freeze import freeze, is_backbone_frozen, unfreeze
from strop.finetune.groups import GradualUnfreezing, param_groups
from strop.finetune.heads import head_module, replace_head, split_outputs
from strop.finetune.inspect import ModelSummary, summarize
from strop.finetune.weights import LoadReport, UnsafeWeightsError, load_weights, read_state_dict
from strop.finetune.zoo import LayerGroup, ModelSpec, available_models, layer_groups, model_spec

__all__ = [
    "GradualUnfreezing",
    "LayerGroup",
    "LoadReport",
    "ModelSpec",
    "ModelSummary",
    "UnsafeWeightsError",
    "available_models",
    "build_model",
    "freeze",
    "head_module",
    "is_backbone_frozen",
    "layer_groups",
    "load_weights",
    "model_spec",
    "param_groups",
    "read_state_dict",
    "replace_head",
    "split_outputs",
    "summarize",
    "unfreeze",
]
