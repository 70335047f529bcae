"""``data.val_batch_size``: validation batches have the size it says (default max(batch, 64)),
and the validation metrics do not depend on it — they equal a hand-written pass, one image at a
time, over the saved weights."""

import json

import pytest
import torch

from strop.train import fit
from strop.train.checkpoint import load_checkpoint
from strop.train.setup import build_parts, build_run, load_datasets
from strop.train.trainer import start_process


def _val_batch_sizes(config):
    ctx, device = start_process(config)
    run = build_run(config, ctx, device, log=lambda msg: None)
    return [len(batch[1]) for batch in run.val_loader]


@pytest.mark.parametrize(("val_batch", "expected"), [(None, [15]), (7, [7, 7, 1])])
def test_validation_batches_have_the_configured_size(
    tiny_config, digits_root, tmp_path, val_batch, expected
):
    # 60 images, val_fraction 0.25 -> 15 validation images; training batch 4
    config = tiny_config(
        digits_root, tmp_path / "run", data={"batch_size": 4, "val_batch_size": val_batch}
    )
    assert _val_batch_sizes(config) == expected


def test_detection_keeps_the_training_batch_by_default():
    from types import SimpleNamespace

    from strop.train.setup import val_batch_size

    data = SimpleNamespace(batch_size=4, val_batch_size=None)
    assert val_batch_size(SimpleNamespace(task="detection", data=data)) == 4
    assert val_batch_size(SimpleNamespace(task="classification", data=data)) == 64
    assert val_batch_size(SimpleNamespace(task="classification", data=data), world_size=2) == 64
    data.val_batch_size = 10
    assert val_batch_size(SimpleNamespace(task="detection", data=data), world_size=2) == 5


def test_val_metrics_with_a_large_val_batch_equal_a_one_image_pass(
    tiny_config, digits_root, tmp_path
):
    config = tiny_config(
        digits_root, tmp_path / "run", epochs=1, data={"batch_size": 4, "val_batch_size": 15}
    )
    result = fit(config)
    choices = json.loads((result.run_dir / "run.json").read_text())
    assert choices["per_process_val_batch"] == 15
    train_ds, val_ds, _, num_classes = load_datasets(config)
    model = build_parts(config, num_classes, train_ds)[0].eval()
    model.load_state_dict(load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["model"])
    correct, losses = 0, []
    with torch.no_grad():
        for x, y in val_ds:
            logits = model(x[None])
            correct += int(logits.argmax(1).item() == int(y))
            losses.append(
                torch.nn.functional.cross_entropy(logits, torch.as_tensor([int(y)])).item()
            )
    assert result.history[-1]["val_accuracy"] == pytest.approx(correct / len(val_ds))
    assert result.history[-1]["val_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)


@pytest.mark.parametrize(
    ("samples", "batch", "expected"),
    [(45, 4, 11), (44, 4, 11), (46, 4, 12), (1, 4, 1), (5, 1, 5), (9, 8, 1), (10, 8, 2)],
)
def test_a_last_training_batch_of_one_image_is_dropped(samples, batch, expected):
    from strop.train.setup import training_batches

    assert training_batches(samples, batch) == expected


def test_the_training_loader_drops_only_a_single_image_batch(tiny_config, digits_root, tmp_path):
    # 45 training images in batches of 4: 11 full batches and a lone image (BatchNorm would fail on it)
    config = tiny_config(digits_root, tmp_path / "run", data={"batch_size": 4})
    ctx, device = start_process(config)
    run = build_run(config, ctx, device, log=lambda msg: None)
    sizes = [len(batch[1]) for batch in run.loader]
    assert sizes == [4] * 11 and run.batches_per_epoch == 11
    config = tiny_config(
        digits_root, tmp_path / "run2", data={"batch_size": 7}
    )  # 45 = 6 × 7 + 3: kept
    run = build_run(config, ctx, device, log=lambda msg: None)
    assert [len(batch[1]) for batch in run.loader] == [7] * 6 + [3] and run.batches_per_epoch == 7


@pytest.mark.parametrize(
    ("image_size", "batch", "val_batch", "expected"),
    [
        (16, 32, None, 256),  # small images: capped at 256
        (112, 32, None, 256),  # 64 * 224**2 / 112**2 = 256
        (160, 32, None, 125),  # 64 * 224**2 // 160**2
        (224, 32, None, 64),  # the validation default
        (512, 32, None, 64),  # never below it
        (224, 128, None, 128),  # a training batch above 64 is the validation default
        (16, 32, 8, 8),  # data.val_batch_size set: taken as it is (memory is the user's call)
    ],
)
def test_extraction_batch_holds_the_pixels_of_64_images_of_224(
    image_size, batch, val_batch, expected
):
    from types import SimpleNamespace

    from strop.train.setup import extraction_batch_size

    data = SimpleNamespace(image_size=image_size, batch_size=batch, val_batch_size=val_batch)
    assert extraction_batch_size(SimpleNamespace(task="classification", data=data)) == expected


def test_the_feature_cache_extracts_at_the_extraction_batch(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    from strop.train import setup

    sizes = []
    real = setup.extract_features

    def spy(*args, batch_size, **kw):
        sizes.append(batch_size)
        return real(*args, batch_size=batch_size, **kw)

    monkeypatch.setattr(setup, "extract_features", spy)
    config = tiny_config(
        digits_root,
        tmp_path / "run",
        model={"name": "resnet18", "freeze": "backbone"},
        data={"batch_size": 4},
    )  # 32 px: 64 * 224**2 // 32**2 = 3136 -> 256
    assert _val_batch_sizes(config) == [15]
    assert sizes == [256, 256]  # the training and the validation images


@pytest.mark.parametrize("fmt", ["channels_last", "contiguous"])
def test_folder_batches_arrive_in_the_models_memory_format(tiny_config, digits_root, tmp_path, fmt):
    # the folder datasets lay their batches out for the model, so moving a batch to the device
    # is no second float copy; what a batch holds does not change
    config = tiny_config(
        digits_root, tmp_path / "run", memory_format=fmt, feature_cache="off", device="cpu"
    )
    ctx, device = start_process(config)
    run = build_run(config, ctx, device, log=lambda msg: None)
    want = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    assert run.memory_format == want
    for loader in (run.loader, run.val_loader):
        x, _ = next(iter(loader))
        assert x.dim() == 4 and x.is_contiguous(memory_format=want)
    x, y = next(iter(run.val_loader))
    one_by_one = torch.stack([run.val_loader.dataset[i][0] for i in range(len(y))])
    assert torch.equal(x, one_by_one)  # shuffle off: the first items, the same numbers
