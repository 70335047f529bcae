"""Augmentation presets: each preset builds the torchvision v2 ops it names, segmentation keeps the
mask aligned with its image, and the output is a function of the seed."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from strop.data.transforms import AUGMENTATIONS, augmentation

SIZE = (32, 32)


def _ops(t) -> list[type]:
    if t is None:
        return []
    if hasattr(t, "geometric"):  # segmentation pair
        return _ops(t.geometric) + _ops(t.photometric)
    return [type(op) for op in t.transforms]


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("none", []),
        ("flip", [v2.RandomHorizontalFlip]),
        ("standard", [v2.RandomResizedCrop, v2.RandomHorizontalFlip]),
        ("crop", [v2.RandomResizedCrop]),
        ("trivialaugment", [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.TrivialAugmentWide]),
        ("randaugment", [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandAugment]),
        ("autoaugment", [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.AutoAugment]),
        ("augmix", [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.AugMix]),
    ],
)
def test_presets_build_the_named_ops(preset, expected):
    assert _ops(augmentation("f", preset, SIZE)) == expected


def test_every_preset_is_listed():
    assert set(AUGMENTATIONS) == {
        "none",
        "flip",
        "standard",
        "crop",
        "trivialaugment",
        "randaugment",
        "autoaugment",
        "augmix",
    }


def test_options_add_jitter_and_erasing_last_and_hflip_false_drops_the_flip():
    t = augmentation(
        "f", "trivialaugment", SIZE, hflip=False, color_jitter=0.4, random_erasing=0.25
    )
    assert _ops(t) == [
        v2.RandomResizedCrop,
        v2.TrivialAugmentWide,
        v2.ColorJitter,
        v2.RandomErasing,
    ]
    jitter, erasing = t.transforms[2], t.transforms[3]
    assert (
        jitter.brightness == (0.6, 1.4) and jitter.saturation == (0.6, 1.4) and jitter.hue is None
    )
    assert erasing.p == 0.25
    assert _ops(augmentation("f", "none", SIZE, random_erasing=0.5)) == [v2.RandomErasing]


def test_flip_preset_flips_or_keeps_exactly():
    img = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    t = augmentation("f", "flip", (4, 5))
    outs = [t(img) for _ in range(20)]
    assert all(torch.equal(o, img) or torch.equal(o, img.flip(-1)) for o in outs)
    assert any(torch.equal(o, img.flip(-1)) for o in outs) and any(
        torch.equal(o, img) for o in outs
    )


@pytest.mark.parametrize("preset", [p for p in AUGMENTATIONS if p != "none"])
def test_same_seed_same_output_other_seed_differs(preset):
    t = augmentation("f", preset, SIZE, color_jitter=0.3, random_erasing=0.5)
    img = torch.randint(
        0, 256, (3, *SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )

    def run(seed):
        torch.manual_seed(seed)
        return torch.stack([t(img) for _ in range(6)])

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def _encoded_pair():
    # a mask of 8x8 blocks of classes 0..2, and an image whose colour IS the class:
    # class c is pure channel c (255 there, 0 elsewhere), so a pure pixel names its class
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 3, (4, 4), generator=g)
    mask = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1).to(torch.uint8)
    image = (torch.nn.functional.one_hot(mask.long(), 3).permute(2, 0, 1) * 255).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


@pytest.mark.parametrize("preset", ["flip", "standard", "crop"])
def test_segmentation_geometric_ops_move_the_mask_with_the_image(preset):
    t = augmentation("f", preset, SIZE, task="segmentation")
    image, mask = _encoded_pair()
    torch.manual_seed(0)
    moved = 0
    for _ in range(10):
        im, m = t(image, mask)
        assert isinstance(m, tv_tensors.Mask) and m.shape == mask.shape
        pure = (im == 255).sum(0) == 1
        pure &= (im == 0).sum(0) == 2
        assert pure.float().mean() > 0.5
        assert torch.equal(im.argmax(0)[pure], m.long()[pure])
        moved += not torch.equal(m, mask)
    assert moved > 0  # the ops did change the geometry


def test_segmentation_photometric_ops_leave_the_mask_alone():
    t = augmentation("f", "none", SIZE, task="segmentation", random_erasing=1.0, color_jitter=0.5)
    image, mask = _encoded_pair()
    torch.manual_seed(0)
    im, m = t(image, mask)
    assert torch.equal(m, mask) and not torch.equal(im, image)


def test_segmentation_refuses_policies_that_cannot_move_masks():
    with pytest.raises(ValueError, match=r"f: augment='randaugment' is for classification only"):
        augmentation("f", "randaugment", SIZE, task="segmentation")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            {"augment": "trivial"},
            ValueError,
            r"augment must be one of .*did you mean 'trivialaugment'",
        ),
        (
            {"augment": "none", "random_erasing": 1.5},
            ValueError,
            r"random_erasing must be a probability",
        ),
        (
            {"augment": "none", "color_jitter": "strong"},
            TypeError,
            r"color_jitter must be a number",
        ),
        (
            {"augment": "none", "color_jitter": -0.1},
            ValueError,
            r"color_jitter values must be >= 0",
        ),
        ({"augment": "flip", "hflip": 1}, TypeError, r"hflip must be a bool"),
        ({"augment": "flip", "task": "detection"}, ValueError, r"task must be one of"),
    ],
)
def test_bad_options_name_the_argument(kwargs, exc, match):
    augment = kwargs.pop("augment")
    with pytest.raises(exc, match=match):
        augmentation("f", augment, SIZE, **kwargs)
