"""Head replacement on every family with a distinct head: each output layer keeps the input width
torchvision gives it, has the new class count, and the model runs forward on the CPU.

Each case starts from torchvision's own 1000-class model and calls ``strop.finetune.replace_head``
(what a fine-tuning run does to pretrained weights); the layer paths are written here, not read
from strop's zoo table.
"""

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from strop.finetune import build_model, replace_head
from strop.finetune.build import load_report_of

NUM_CLASSES = 3

# smallest variant of each family: (name, output layers, forward image size)
CASES = [
    ("densenet121", ("classifier",), 32),
    (
        "inception_v3",
        ("fc", "AuxLogits.fc"),
        80,
    ),  # eval forward: the aux head only runs in training
    ("googlenet", ("fc", "aux1.fc2", "aux2.fc2"), 32),
    ("squeezenet1_1", ("classifier.1",), 64),
    ("mobilenet_v2", ("classifier.1",), 32),
    ("mobilenet_v3_small", ("classifier.3",), 32),
    ("efficientnet_b0", ("classifier.1",), 32),
    ("vit_b_16", ("heads.head",), 224),  # ViT's position embedding fixes the size
    ("swin_t", ("head",), 32),
    ("convnext_tiny", ("classifier.2",), 32),
    ("regnet_y_400mf", ("fc",), 32),
    ("resnet18", ("fc",), 32),
]


def _width(layer):
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _out(layer):
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _reference(name):
    kwargs = (
        {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    )
    torch.manual_seed(0)
    return get_model(name, weights=None, **kwargs)  # torchvision's 1000-class model


@pytest.mark.slow
@pytest.mark.parametrize(("name", "layers", "size"), CASES, ids=[c[0] for c in CASES])
def test_replaced_heads_keep_their_input_width_and_run(name, layers, size):
    # caught by: a head rebuilt with a guessed width, aux heads left at 1000 classes, the
    # squeezenet conv head turned into a Linear or given a new kernel, a missing bias
    model = _reference(name)
    old = {path: model.get_submodule(path) for path in layers}
    assert all(_out(layer) == 1000 for layer in old.values())
    for p in model.parameters():  # a frozen model: the new head must be trainable all the same
        p.requires_grad_(False)
    assert replace_head(model, NUM_CLASSES) is model
    for path in layers:
        new = model.get_submodule(path)
        assert new is not old[path] and type(new) is type(old[path]), path
        assert _width(new) == _width(old[path]), path
        assert _out(new) == NUM_CLASSES, path
        assert (new.bias is None) == (old[path].bias is None), path
        if isinstance(new, nn.Conv2d):
            assert new.kernel_size == old[path].kernel_size, path
        assert all(p.requires_grad for p in new.parameters()), path
    if hasattr(model, "num_classes"):  # squeezenet/vit keep the class count as a plain attribute
        assert model.num_classes == NUM_CLASSES
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_googlenet_aux_heads_run_in_training_with_the_new_class_count():
    model = replace_head(_reference("googlenet"), NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert [t.shape for t in out] == [(2, NUM_CLASSES)] * 3


@pytest.mark.slow
def test_build_model_from_1000_class_weights_resets_the_head_and_runs(tmp_path):
    # the path a fine-tuning run takes: ImageNet-shaped weights into a 3-class model
    ref = _reference("googlenet")
    path = tmp_path / "googlenet.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("googlenet", num_classes=NUM_CLASSES, weights=path)
    assert set(load_report_of(model).head_reset) >= {
        "fc.weight",
        "aux1.fc2.weight",
        "aux2.fc2.weight",
    }
    assert torch.equal(model.conv1.conv.weight, ref.conv1.conv.weight)
    assert model.fc.in_features == ref.fc.in_features and model.fc.out_features == NUM_CLASSES
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert [t.shape for t in out] == [(2, NUM_CLASSES)] * 3


def test_replace_head_keeps_bias_and_kernel_of_a_modified_head():
    # torchvision's heads all have a bias and 1x1 conv heads; the documented rule ("layers keep
    # their input size, bias, dtype") must hold for a head without a bias or with a 3x3 kernel too
    resnet = get_model("resnet18", weights=None)
    resnet.fc = nn.Linear(512, 1000, bias=False).double()
    replace_head(resnet, NUM_CLASSES)
    assert resnet.fc.bias is None and resnet.fc.weight.dtype == torch.float64
    assert (resnet.fc.in_features, resnet.fc.out_features) == (512, NUM_CLASSES)
    squeeze = get_model("squeezenet1_1", weights=None)
    squeeze.classifier[1] = nn.Conv2d(512, 1000, kernel_size=3, padding=1)
    replace_head(squeeze, NUM_CLASSES)
    conv = squeeze.classifier[1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (
        512,
        NUM_CLASSES,
        (3, 3),
        (1, 1),
    )
    assert squeeze.eval()(torch.randn(1, 3, 64, 64)).shape == (1, NUM_CLASSES)
