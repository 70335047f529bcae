"""Every torchvision builder (on the meta device: shapes only, so all of them fit in seconds)."""

from __future__ import annotations

import pytest

from strop.finetune import (
    available_models,
    freeze,
    is_backbone_frozen,
    layer_groups,
    model_spec,
    replace_head,
)
from strop.finetune.zoo import build_architecture

# RegNet builders compute widths with real tensors and cannot run on meta; the two small ones
# are built on CPU, the big ones (up to 644M parameters) would only cost time
NAMES = [n for n in available_models() if not n.startswith("regnet") or n.endswith("_400mf")]


@pytest.mark.parametrize("name", NAMES)
def test_every_builder_head_groups_and_freezing(name):
    model = build_architecture(name, num_classes=7, device="meta")
    spec = model_spec(model)
    layers = [model.get_submodule(p) for p in spec.output_layers]
    assert layers and all(
        getattr(m, "out_features", getattr(m, "out_channels", None)) == 7 for m in layers
    )
    groups = layer_groups(model)
    ids = [id(p) for g in groups for _, p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # a partition
    replace_head(model, 3)
    assert model_spec(model).num_classes == 3
    freeze(model, "backbone")
    heads = [spec.head, *spec.aux_heads]
    expected = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert is_backbone_frozen(model)


def test_all_classification_builders_are_covered():
    import torchvision

    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(available_models())
    assert len(NAMES) >= 70
