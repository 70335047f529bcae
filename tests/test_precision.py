import copy

import pytest
import torch

from strop import precision as P
from strop.precision import (
    FP32_CHANNELS_LAST_MIN_SIZE,
    MixedPrecision,
    Precision,
    convolutions_frozen,
    resolve,
    resolve_memory_format,
)


@pytest.fixture
def fake_hw(monkeypatch):
    """Set the hardware probes: CPU flags and (optionally) a CUDA compute capability."""

    def set_hw(*, cpu_flags=(), cuda=None):
        monkeypatch.setattr(P, "_cpu_flags", lambda: frozenset(cpu_flags))
        monkeypatch.setattr(P, "_cuda_capability", lambda device: cuda)

    return set_hw


@pytest.mark.parametrize(
    ("device", "cpu_flags", "cuda", "name", "dtype", "why"),
    [
        ("cuda", (), (9, 0), "bf16", torch.bfloat16, "Ampere or newer"),
        ("cuda:0", (), (8, 0), "bf16", torch.bfloat16, "compute capability 8.0"),
        ("cuda", (), (7, 5), "fp16", torch.float16, "GradScaler"),
        ("cpu", ("avx512f", "amx_bf16", "avx512_bf16"), None, "bf16", torch.bfloat16, "AMX-BF16"),
        ("cpu", ("avx512f", "avx512_bf16"), None, "bf16", torch.bfloat16, "AVX512-BF16"),
        (
            "cpu",
            ("avx2", "avx512f"),
            None,
            "fp32",
            torch.float32,
            "neither AMX-BF16 nor AVX512-BF16",
        ),
        ("cpu", (), None, "fp32", torch.float32, "emulated"),
    ],
)
def test_resolve_auto_table(fake_hw, device, cpu_flags, cuda, name, dtype, why):
    fake_hw(cpu_flags=cpu_flags, cuda=cuda)
    p = resolve("auto", device)
    assert (p.name, p.dtype, p.device_type) == (name, dtype, torch.device(device).type)
    assert why in p.reason and p.reason.startswith("auto:")
    assert p.needs_scaler == (name == "fp16")


def test_resolve_explicit_and_aliases(fake_hw):
    fake_hw(cpu_flags=("avx512_bf16",))
    assert resolve("bfloat16").name == "bf16"
    assert resolve("16-mixed").name == "fp16"
    assert resolve("fp32").dtype == torch.float32
    assert resolve(Precision("bf16", "cpu", torch.bfloat16, "x")).name == "bf16"
    assert "emulated" in resolve("fp16", "cpu").reason  # no AVX512-FP16 in the fake flags
    fake_hw(cpu_flags=())
    assert "emulated" in resolve("bf16", "cpu").reason


def test_resolve_errors(fake_hw):
    fake_hw(cpu_flags=(), cuda=None)
    with pytest.raises(
        ValueError, match=r"resolve: precision must be one of .*got 'bf61'; did you mean 'bf16'\?"
    ):
        resolve("bf61")
    with pytest.raises(TypeError, match="resolve: precision must be a string; got int 16"):
        resolve(16)
    with pytest.raises(ValueError, match="resolve: device='cuda' but CUDA is not available"):
        resolve("auto", "cuda")
    with pytest.raises(ValueError, match="resolve: device must be"):
        resolve("auto", "gpu0")
    fake_hw(cuda=(7, 0))
    with pytest.raises(ValueError, match=r"resolve: precision='bf16' needs .* 7\.0"):
        resolve("bf16", "cuda")


def test_resolve_reports_this_machine():
    # the choice agrees with this CPU's flags read independently from /proc/cpuinfo
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("needs /proc/cpuinfo (Linux) to read the CPU flags independently")
    flags = {
        f
        for line in info.read_text().splitlines()
        if line.startswith("flags")
        for f in line.split(":", 1)[1].split()
    }
    p = resolve("auto", "cpu")
    if "amx_bf16" in flags:
        assert (p.name, p.dtype) == ("bf16", torch.bfloat16) and "AMX-BF16" in p.reason
    elif "avx512_bf16" in flags:
        assert (p.name, p.dtype) == ("bf16", torch.bfloat16) and "AVX512-BF16" in p.reason
    else:
        assert (p.name, p.dtype) == (
            "fp32",
            torch.float32,
        ) and "neither AMX-BF16 nor AVX512-BF16" in p.reason


CL, NCHW = torch.channels_last, torch.contiguous_format


@pytest.mark.parametrize(
    ("fmt", "device", "cpu_flags", "cuda", "prec", "forward_only", "expected"),
    [
        ("auto", "cpu", ("avx512_bf16",), None, "bf16", False, CL),
        ("auto", "cpu", ("avx512_bf16",), None, "fp32", False, NCHW),
        # emulated bf16 (AVX2 only): 2.5x faster in NHWC, measured (benchmarks/auto_choices.py)
        ("auto", "cpu", (), None, "bf16", False, CL),
        ("auto", "cpu", ("amx_bf16",), None, "auto", False, CL),
        ("auto", "cpu", ("avx2",), None, "auto", False, NCHW),  # auto -> fp32 on this CPU
        # frozen convolutions: oneDNN's fp32 NHWC forward is the faster one on a CPU
        ("auto", "cpu", ("avx2",), None, "auto", True, CL),
        ("auto", "cpu", ("avx512_bf16",), None, "fp32", True, CL),
        ("auto", "cuda", (), (8, 6), "auto", False, CL),
        ("auto", "cuda", (), (7, 0), "fp16", False, CL),
        ("auto", "cuda", (), (8, 6), "fp32", False, NCHW),
        ("auto", "cuda", (), (8, 6), "fp32", True, NCHW),  # measured on CPUs only
        ("channels_last", "cpu", (), None, "fp32", False, CL),
        ("contiguous", "cpu", ("amx_bf16",), None, "bf16", False, NCHW),
        ("contiguous", "cpu", ("avx2",), None, "fp32", True, NCHW),
    ],
)
def test_resolve_memory_format(fake_hw, fmt, device, cpu_flags, cuda, prec, forward_only, expected):
    fake_hw(cpu_flags=cpu_flags, cuda=cuda)
    assert resolve_memory_format(fmt, device, prec, forward_only=forward_only) == expected


@pytest.mark.parametrize(
    ("device", "cpu_flags", "cuda", "prec", "fmt", "image_size", "expected"),
    [
        # fp32 training on a CPU: NHWC from 128 px (1.19x at 224 px on AVX2), NCHW below it
        ("cpu", ("avx2",), None, "auto", "auto", 224, CL),
        ("cpu", ("avx2",), None, "auto", "auto", 128, CL),
        ("cpu", ("avx2",), None, "auto", "auto", 127, NCHW),
        ("cpu", ("avx2",), None, "auto", "auto", 64, NCHW),
        ("cpu", ("avx2",), None, "auto", "auto", None, NCHW),  # size unknown: as before
        ("cpu", ("avx512_bf16",), None, "fp32", "auto", 224, CL),
        ("cpu", ("avx512_bf16",), None, "auto", "auto", 32, CL),  # bf16: NHWC at any size
        ("cuda", (), (8, 6), "fp32", "auto", 224, NCHW),  # measured on CPUs only
        ("cpu", ("avx2",), None, "auto", "contiguous", 224, NCHW),  # a forced format wins
        ("cpu", ("avx2",), None, "fp16", "auto", 224, NCHW),  # the rule is fp32's, measured
    ],
)
def test_fp32_training_on_a_cpu_goes_channels_last_for_large_images(
    fake_hw, device, cpu_flags, cuda, prec, fmt, image_size, expected
):
    fake_hw(cpu_flags=cpu_flags, cuda=cuda)
    assert resolve_memory_format(fmt, device, prec, image_size=image_size) == expected
    assert FP32_CHANNELS_LAST_MIN_SIZE == 128


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_resolve_memory_format_names_a_bad_image_size(fake_hw, bad):
    fake_hw(cpu_flags=("avx2",), cuda=None)
    for fmt, prec in (("auto", "fp32"), ("auto", "bf16"), ("channels_last", "fp32")):
        with pytest.raises(
            (ValueError, TypeError), match=r"resolve_memory_format: image_size must"
        ):
            resolve_memory_format(fmt, "cpu", prec, image_size=bad)


def test_convolutions_frozen():
    from torchvision.models import resnet18

    model = resnet18(num_classes=3)
    assert not convolutions_frozen(model)  # everything trains
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))  # the chapter's frozen backbone + new head
    assert convolutions_frozen(model)
    model.layer4[1].bn2.weight.requires_grad_(True)  # train_bn: backward runs through convs
    assert not convolutions_frozen(model)
    model.layer4[1].bn2.weight.requires_grad_(False)
    model.layer4[1].conv2.weight.requires_grad_(True)  # one conv trains: its backward runs
    assert not convolutions_frozen(model)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4)).requires_grad_(False)
    assert not convolutions_frozen(mlp)  # no convolution at all: nothing to say


def test_resolve_memory_format_error():
    with pytest.raises(
        ValueError,
        match=r"resolve_memory_format: fmt must be one of .*did you mean 'channels_last'",
    ):
        resolve_memory_format("channel_last")


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(64, 16, generator=g)
    y = torch.randn(64, 1, generator=g)
    return model, x, y


def _one_step(prec, *, clip=None):
    model, x, y = _regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mp = MixedPrecision(prec, "cpu")
    with mp.autocast():
        out = model(x)
    loss = torch.nn.functional.mse_loss(out.float(), y)
    mp.backward(loss)
    assert mp.step(opt, clip_grad_norm=clip)
    return model, out


def test_bf16_step_updates_fp32_master_weights_close_to_fp32():
    ref, out32 = _one_step("fp32")
    got, out16 = _one_step("bf16")
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    before, _, _ = _regression()
    for p_ref, p_got, p0 in zip(
        ref.parameters(), got.parameters(), before.parameters(), strict=True
    ):
        assert p_got.dtype == torch.float32  # master weights stay fp32
        update_ref, update_got = p_ref - p0, p_got - p0
        assert update_ref.abs().max() > 1e-3  # the step did something
        # bf16 has 8 mantissa bits: updates agree to ~1e-2 relative
        torch.testing.assert_close(update_got, update_ref, rtol=0.05, atol=2e-3)


def test_fp32_autocast_is_a_no_op_and_has_no_scaler():
    mp = MixedPrecision("fp32")
    assert not mp.scaler.is_enabled()
    with mp.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert not MixedPrecision("bf16").scaler.is_enabled()  # bf16 never gets a scaler
    assert MixedPrecision("fp16").scaler.is_enabled()


def test_fp16_inf_gradient_skips_step_and_counts():
    model, x, y = _regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mp = MixedPrecision("fp16", "cpu", init_scale=1024.0)
    before = copy.deepcopy(model.state_dict())
    with mp.autocast():
        out = model(x)
        assert out.dtype == torch.float16
    mp.backward(torch.nn.functional.mse_loss(out.float(), y))
    model[0].weight.grad[0, 0] = float("inf")  # an overflow, as fp16 produces them
    assert mp.step(opt, clip_grad_norm=1.0) is False
    assert mp.skipped_steps == 1
    assert mp.scaler.get_scale() == 512.0  # backed off by torch's factor 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing moved
    # the next, finite step goes through
    opt.zero_grad()
    with mp.autocast():
        out = model(x)
    mp.backward(torch.nn.functional.mse_loss(out.float(), y))
    assert mp.step(opt) is True
    assert mp.skipped_steps == 1
    assert not torch.equal(model[0].weight, before["0.weight"])


@pytest.mark.parametrize("prec", ["fp32", "fp16", "bf16"])
def test_clipping_sees_unscaled_gradients(prec):
    model, x, y = _regression()
    # reference: plain fp32 gradients of the same loss
    ref_model, _, _ = _regression()
    torch.nn.functional.mse_loss(ref_model(x), y).backward()
    true_norm = torch.nn.utils.get_total_norm([p.grad for p in ref_model.parameters()])

    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: we look at gradients only
    mp = MixedPrecision(prec, "cpu", init_scale=2.0**10)
    with mp.autocast():
        out = model(x)
    mp.backward(torch.nn.functional.mse_loss(out.float(), y))
    max_norm = float(true_norm) / 4
    assert mp.step(opt, clip_grad_norm=max_norm)
    # the reported norm is the true one (not ×1024), and the clipped gradients have max_norm
    torch.testing.assert_close(mp.grad_norm, true_norm, rtol=0.03, atol=0.0)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    torch.testing.assert_close(clipped, torch.tensor(max_norm), rtol=1e-3, atol=0.0)


def test_state_dict_round_trip():
    mp = MixedPrecision("fp16", "cpu", init_scale=256.0)
    mp.scaler.scale(torch.tensor(1.0))  # the scaler creates its scale lazily
    mp.scaler.update(new_scale=64.0)
    mp.skipped_steps = 3
    state = mp.state_dict()
    fresh = MixedPrecision("fp16", "cpu")
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.state_dict() == state
    assert fresh.scaler.get_scale() == 64.0 and fresh.skipped_steps == 3
    # an fp16 state into a bf16 run: no scaler to load into, no error
    other = MixedPrecision("bf16", "cpu")
    other.load_state_dict(state)
    assert other.skipped_steps == 3 and not other.scaler.is_enabled()
    # a bf16 state into an fp16 run: the scaler starts fresh
    fresh2 = MixedPrecision("fp16", "cpu", init_scale=128.0)
    fresh2.load_state_dict(MixedPrecision("bf16").state_dict())
    assert fresh2.scaler.get_scale() == 128.0
