"""Weights: round trips from file, safetensors and the hub cache; safety; bad files."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
from _finetune_cases import NUM_CLASSES, OUTPUT_LAYERS, TUTORIAL
from safetensors.torch import save_file
from torchvision.models import get_model_weights

from strop.finetune import UnsafeWeightsError, build_model, load_weights, read_state_dict
from strop.finetune.build import load_report_of, load_summary
from strop.finetune.weights import file_sha256, hub_cache_path


def _imagenet_state(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The model's weights with 1000-class heads, as a pretrained file would hold them."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for path in OUTPUT_LAYERS[name]:
        w = state[f"{path}.weight"]
        state[f"{path}.weight"] = torch.randn(1000, *w.shape[1:])
        state[f"{path}.bias"] = torch.randn(1000)
    return state


def _assert_loaded(model, source_state, name):
    heads = tuple(p + "." for p in OUTPUT_LAYERS[name])
    got = model.state_dict()
    body = [k for k in source_state if not k.startswith(heads)]
    assert body and all(torch.equal(got[k], source_state[k]) for k in body)
    for path in OUTPUT_LAYERS[name]:
        assert got[f"{path}.weight"].shape[0] == NUM_CLASSES  # new head, freshly initialised


def _write(fmt, state, name, tmp_path, monkeypatch):
    if fmt == "pth":
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        return path
    if fmt == "safetensors":
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        return path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = hub_cache_path(get_model_weights(name).DEFAULT)
    assert str(cached).startswith(str(tmp_path))
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    return "DEFAULT"


FORMATS = ("pth", "safetensors", "hub")
# every tutorial model in one format (cycling), and three small ones in all three
ROUND_TRIPS = [(n, FORMATS[i % 3]) for i, n in enumerate(TUTORIAL)] + [
    (n, f) for n in ("resnet18", "squeezenet1_0", "googlenet") for f in FORMATS
]


@pytest.mark.parametrize(("name", "fmt"), sorted(set(ROUND_TRIPS)))
def test_weights_round_trip(tutorial_models, tmp_path, monkeypatch, name, fmt):
    state = _imagenet_state(tutorial_models[name], name)
    weights = _write(fmt, state, name, tmp_path, monkeypatch)
    model = build_model(name, num_classes=NUM_CLASSES, weights=weights)
    _assert_loaded(model, state, name)
    report = load_report_of(model)
    assert report.ok and set(report.head_reset) == {
        f"{p}.{s}" for p in OUTPUT_LAYERS[name] for s in ("weight", "bias")
    }
    if name == "inception_v3":
        assert model.transform_input  # torchvision's setting for pretrained weights


def test_keep_head_loads_a_same_class_count_head_and_checkpoint_dicts_are_unwrapped(
    tutorial_models, tmp_path
):
    source = tutorial_models["resnet18"]
    state = source.state_dict()
    path = tmp_path / "ckpt.pt"
    # a DDP checkpoint inside a training checkpoint dict
    torch.save(
        {"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}, "best": 0.5}, path
    )
    model = build_model("resnet18", num_classes=NUM_CLASSES, weights=path, keep_head=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert load_report_of(model).head_reset == ()
    assert load_summary(model) == (
        f"weights {str(path)!r}: {len(state)} tensors loaded; head loaded from the source (same class count)"
    )


def test_fine_tuning_starts_from_a_new_head_even_with_the_same_class_count(
    tutorial_models, tmp_path
):
    # the trap: a 5-class source fine-tuned to a 5-class target silently kept the source's head
    state = {k: v.clone() for k, v in tutorial_models["resnet18"].state_dict().items()}
    state["fc.weight"].fill_(0.5)  # a source head no fresh initialisation can produce
    state["fc.bias"].fill_(0.5)
    path = tmp_path / "source.pth"
    torch.save(state, path)
    torch.manual_seed(7)
    model = build_model("resnet18", num_classes=NUM_CLASSES, weights=path)
    torch.manual_seed(7)
    fresh = build_model("resnet18", num_classes=NUM_CLASSES)  # torchvision's init, same draws
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("fc."))
    for k in ("fc.weight", "fc.bias"):
        assert torch.equal(got[k], fresh.state_dict()[k]) and not torch.equal(got[k], state[k])
    report = load_report_of(model)
    assert report.ok and report.head_reset == ("fc.weight", "fc.bias")
    assert report.loaded == len(state) - 2
    assert load_summary(model) == (
        f"weights {str(path)!r}: {len(state) - 2} tensors loaded; new head (keep_head=False), "
        "2 tensors left as initialised"
    )
    assert "head re-initialised (keep_head=False): fc.weight, fc.bias" in str(report)
    with pytest.raises(TypeError, match="build_model: keep_head must be a bool; got str 'yes'"):
        build_model("resnet18", num_classes=NUM_CLASSES, weights=path, keep_head="yes")


def test_load_weights_keeps_a_fitting_head_by_default(tutorial_models):
    # load_weights is a loader, not a fine-tuning recipe: a head that fits is loaded
    state = tutorial_models["resnet18"].state_dict()
    model = build_model("resnet18", num_classes=NUM_CLASSES)
    report = load_weights(model, state)
    assert report.head_reset == () and torch.equal(model.fc.weight, state["fc.weight"])
    assert load_summary(build_model("resnet18", num_classes=NUM_CLASSES)) is None


def test_sha256_checked_before_loading(tutorial_models, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(tutorial_models["resnet18"].state_dict(), path)
    digest = file_sha256(path)
    import hashlib

    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = tutorial_models["resnet18"].state_dict()
    for sha in (digest, digest[:10].upper()):  # a matching digest (or prefix) loads the weights
        model = build_model("resnet18", num_classes=NUM_CLASSES, weights=path, sha256=sha)
        # the backbone is the file's; the head is new (keep_head=False, the default)
        assert all(
            torch.equal(model.state_dict()[k], v)
            for k, v in expected.items()
            if not k.startswith("fc.")
        )
    with pytest.raises(
        ValueError, match=r"load_weights: SHA-256 of '.*w\.pth' is [0-9a-f]{64}, expected 0{64}"
    ):
        build_model("resnet18", num_classes=NUM_CLASSES, weights=path, sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256 must be a hex digest"):
        build_model("resnet18", num_classes=NUM_CLASSES, weights=path, sha256="xyz")


def test_other_architecture_is_refused_and_nothing_is_loaded(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(build_model("resnet34", num_classes=NUM_CLASSES).state_dict(), path)
    model = build_model("resnet18", num_classes=NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"load_weights: .*resnet34\.pth' does not fit resnet18; nothing was loaded.*unexpected in source",
    ):
        load_weights(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.warns(UserWarning, match="partial load.*unexpected in source"):
        report = load_weights(model, path, strict=False)
    assert not report.ok and report.unexpected and not report.missing
    assert torch.equal(
        model.state_dict()["layer1.0.conv1.weight"], torch.load(path)["layer1.0.conv1.weight"]
    )
    other = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, other)
    with pytest.raises(ValueError, match="shares no tensor with ResNet"):
        load_weights(model, other, strict=False)


def test_shape_mismatch_outside_the_head_is_reported(tmp_path):
    model = build_model("resnet18", num_classes=NUM_CLASSES)
    state = model.state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grayscale stem
    with pytest.raises(
        ValueError,
        match=r"shape mismatch \(1\): conv1\.weight model \(64, 3, 7, 7\) vs source \(64, 1, 7, 7\)",
    ):
        load_weights(model, state)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file_error_names_the_file(tmp_path, damage, suffix):
    good = tmp_path / f"good{suffix}"
    state = {"fc.weight": torch.randn(5, 512), "fc.bias": torch.randn(5)}
    torch.save(state, good) if suffix == ".pth" else save_file(state, good)
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 4}[
            damage
        ]
    )
    model = build_model("resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(
        ValueError, match=rf"cannot read '.*bad\{suffix}': the file is corrupt or truncated"
    ):
        load_weights(model, bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth' does not exist"):
        load_weights(model, tmp_path / "missing.pth")


class _CreatesFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, container):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    payload = {"fc.weight": torch.zeros(5, 512), "x": _CreatesFile(target)}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    model = build_model("resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(
        UnsafeWeightsError, match=r"refused to load '.*evil\.pth'.*trust_pickle=True \(unsafe"
    ):
        load_weights(model, path)
    with pytest.raises(UnsafeWeightsError):
        build_model("resnet18", num_classes=NUM_CLASSES, weights=path)
    assert not target.exists()


def test_trust_pickle_opts_in_to_legacy_checkpoints(tmp_path):
    state = build_model("resnet18", num_classes=NUM_CLASSES).state_dict()
    path = tmp_path / "legacy.pth"
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": state}, path)
    with pytest.raises(UnsafeWeightsError):
        read_state_dict(path)
    loaded = read_state_dict(path, trust_pickle=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_uncached_hub_weights_fail_clearly_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        ValueError,
        match=r"weights ResNet18_Weights\.IMAGENET1K_V1 are not in the hub cache .*resnet18-f37072fd\.pth.*copy the file",
    ):
        build_model("resnet18", num_classes=NUM_CLASSES, weights="IMAGENET1K_V1")


def test_unknown_weights_name():
    with pytest.raises(
        ValueError,
        match=r"build_model: weights 'IMAGENET1K_V3' is neither a file nor a weights name of resnet18; did you mean 'IMAGENET1K_V1'",
    ):
        build_model("resnet18", num_classes=NUM_CLASSES, weights="IMAGENET1K_V3")


def test_aux_weights_are_ignored_when_aux_heads_are_disabled(tutorial_models):
    state = _imagenet_state(tutorial_models["googlenet"], "googlenet")
    model = build_model("googlenet", num_classes=NUM_CLASSES, aux_logits=False)
    report = load_weights(model, state)
    assert (
        report.ok
        and report.ignored
        and all(k.startswith(("aux1.", "aux2.")) for k in report.ignored)
    )
