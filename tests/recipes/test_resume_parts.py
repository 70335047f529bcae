"""The parts together in a hand-written loop (the shape phase 2 wires into fit): with the
balanced sampler, random augmentation, Mixup/CutMix, EMA and SWA, 1 epoch + save/restore +
1 epoch equals 2 uninterrupted epochs, weight for weight — every part's state is a state_dict."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from strop.data.mixing import BatchMix
from strop.data.samplers import BalancedSampler
from strop.data.transforms import augmentation
from strop.optim import build_optimizer
from strop.train.ema import ModelEMA
from strop.train.swa import SWA

LABELS = torch.tensor([0] * 12 + [1] * 3 + [2] * 3)
IMAGES = torch.randint(
    0, 256, (18, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
)


def _parts():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    opt = build_optimizer("adamw", model.parameters(), lr=0.01, weight_decay=0.01)
    return {
        "model": model,
        "optimizer": opt,
        "sampler": BalancedSampler(LABELS, seed=1),
        "mix": BatchMix(3, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, seed=2),
        "ema": ModelEMA(model, decay=0.9),
        "swa": SWA(model, opt, start_epoch=1, lr=0.005),
    }


AUG = augmentation("test", "standard", (8, 8), random_erasing=0.5)


def _epoch(parts, epoch):
    model, opt = parts["model"], parts["optimizer"]
    parts["sampler"].set_epoch(epoch)
    parts["swa"].on_epoch_start(epoch)
    torch.manual_seed(100 + epoch)  # what the loader's per-epoch reseed does for augmentation
    loader = DataLoader(TensorDataset(IMAGES, LABELS), batch_size=6, sampler=parts["sampler"])
    for x, y in loader:
        x = torch.stack([AUG(img) for img in x]).float() / 255
        x, soft = parts["mix"](x, y)
        loss = nn.functional.cross_entropy(model(x), soft)
        opt.zero_grad()
        loss.backward()
        opt.step()
        parts["ema"].update(model)
    parts["swa"].on_epoch_end(epoch, model)


def _state(parts):
    return copy.deepcopy({k: v.state_dict() for k, v in parts.items()})


def _load(parts, state):
    for k, v in parts.items():
        v.load_state_dict(state[k])


def test_one_plus_resume_plus_one_equals_two_epochs():
    straight = _parts()
    _epoch(straight, 0)
    _epoch(straight, 1)

    first = _parts()
    _epoch(first, 0)
    saved = _state(first)
    resumed = _parts()
    _load(resumed, saved)
    _epoch(resumed, 1)

    for name in ("model", "ema", "swa"):
        a = straight[name].state_dict() if name == "model" else straight[name].module.state_dict()
        b = resumed[name].state_dict() if name == "model" else resumed[name].module.state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    assert resumed["ema"].updates == straight["ema"].updates == 6
