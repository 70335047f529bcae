"""Property-based tests: every public loss and box function either returns the documented value or
raises a clear ValueError/TypeError naming itself — never a crash deep in torch, never a silent
NaN for valid input.

Documented values checked here: valid finite input -> finite loss of the documented dtype (float32,
float64 for float64 input) and range; an empty batch -> 0; NaN in the input -> NaN loss (it is
propagated, not checked, so that a trainer's non-finite-loss policy sees it).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strop.losses as L

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

SEG_FNS = {
    "dice_loss": lambda x, t, m, ii: L.dice_loss(x, t, mode=m, ignore_index=ii),
    "jaccard_loss": lambda x, t, m, ii: L.jaccard_loss(
        x, t, mode=m, ignore_index=ii, per_image=True
    ),
    "tversky_loss": lambda x, t, m, ii: L.tversky_loss(
        x, t, mode=m, ignore_index=ii, gamma=0.75, alpha=0.7
    ),
    "dice_bce_loss": lambda x, t, m, ii: L.dice_bce_loss(x, t, mode=m, ignore_index=ii),
    "focal_loss": lambda x, t, m, ii: L.focal_loss(x, t, mode=m, ignore_index=ii, gamma=0.5),
    "lovasz_loss": lambda x, t, m, ii: L.lovasz_loss(x, t, mode=m, ignore_index=ii, per_image=True),
}
UPPER = {"dice_loss": 1, "jaccard_loss": 1, "tversky_loss": 1}  # losses bounded by 1


def _expected_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@st.composite
def seg_case(draw):
    mode = draw(st.sampled_from(["binary", "multiclass", "multilabel"]))
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * draw(st.sampled_from([1.0, 30.0]))).to(dtype)
    special = draw(st.sampled_from([None, "nan", "inf"]))
    if special and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float(special)
    ignore = draw(st.sampled_from([None, 255]))
    wrong = draw(st.sampled_from([None, None, None, "range", "shape", "dtype"]))
    if mode == "multiclass":
        t = torch.randint(0, max(c, 1), (n, h, w), generator=g)
    else:
        t = (torch.rand(n, c, h, w, generator=g) > 0.5).float()
    if ignore is not None and t.numel():
        t.view(-1)[-1] = 255
    if wrong == "range":
        if t.numel() < 2:
            wrong = None  # nothing to corrupt without touching the ignored element
        elif mode == "multiclass":
            t.view(-1)[0] = c
        else:
            t.view(-1)[0] = draw(st.sampled_from([2.0, -1.0, float("nan")]))
    elif wrong == "dtype":
        t = t.float() if mode == "multiclass" else t.to(torch.complex64)
    elif wrong == "shape":
        t = (t[..., :-1] if t.shape[-1] > 1 else t.unsqueeze(-1).expand(*t.shape, 2)).contiguous()
    return mode, x, t, ignore, wrong, special


@pytest.mark.parametrize("name", sorted(SEG_FNS))
@SETTINGS
@given(case=seg_case())
def test_segmentation_losses_never_crash_or_lie(name, case):
    mode, x, t, ignore, wrong, special = case
    fn = SEG_FNS[name]
    try:
        out = fn(x, t, mode, ignore)
    except (ValueError, TypeError) as err:
        assert str(err).startswith(f"{name}:"), str(err)
        # a case built to be valid must not be refused, except where the docs say so
        if wrong is None:
            allowed = ("C >= 2" in str(err) and mode == "multiclass") or (
                "0/1" in str(err) and name == "lovasz_loss"
            )
            assert allowed, str(err)
        return
    assert wrong is None, f"accepted a bad target ({wrong})"
    assert out.dtype == _expected_dtype(x.dtype)
    assert out.dim() == 0
    if special == "nan" and x.numel():
        assert torch.isnan(out), "NaN in the input must give a NaN loss"
    elif special is None:
        assert torch.isfinite(out), "finite valid input gave a non-finite loss"
        assert out.item() >= -1e-6
        if name in UPPER:
            assert out.item() <= UPPER[name] + 1e-6
        if x.numel() == 0:
            assert out.item() == 0.0


@st.composite
def box_case(draw):
    n = draw(st.integers(0, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bfloat16]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)

    def boxes():
        lo = torch.rand(n, 2, generator=g) * 10
        size = torch.rand(n, 2, generator=g) * 5
        if draw(st.booleans()):
            size[: n // 2] = 0  # degenerate boxes: lines and points
        return torch.cat([lo, lo + size], 1)

    a, b = boxes(), boxes()
    bad = draw(st.sampled_from([None, None, "order", "nan", "inf", "shape"]))
    if bad and n:
        if bad == "order":
            a[0, 2] = a[0, 0] - 1
        elif bad in ("nan", "inf"):
            b[-1, 1] = float(bad)
        else:
            b = b[:, :3]
    if dtype == torch.int64:
        a, b = (a * 10).round(), (b * 10).round()
    # an integer tensor cannot hold NaN/inf: such a b stays float32 (mixed dtypes promote)
    b = b if bad in ("nan", "inf") and not dtype.is_floating_point else b.to(dtype)
    return a.to(dtype), b, bad if n else None


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou", "pairwise", "pairwise-min"])
@SETTINGS
@given(case=box_case())
def test_box_functions_never_crash_or_lie(kind, case):
    a, b, bad = case
    name = "box_iou" if kind.startswith("pairwise") else "box_iou_loss"
    a = a.clone().requires_grad_(a.is_floating_point())
    try:
        if name == "box_iou":
            out = L.box_iou(a, b, denominator="min" if kind.endswith("min") else "union")
        else:
            out = L.box_iou_loss(a, b, kind=kind)
    except (ValueError, TypeError) as err:
        assert str(err).startswith(f"{name}:"), str(err)
        assert bad is not None, f"valid boxes refused: {err}"
        return
    assert bad is None, f"accepted bad boxes ({bad})"
    assert torch.isfinite(out).all()
    if name == "box_iou":
        assert out.shape == (a.shape[0], b.shape[0])
        assert ((out >= 0) & (out <= 1 + 1e-6)).all()
    else:
        assert 0 <= out.item() <= (1 if kind == "iou" else 2) + 1e-5
        if a.requires_grad and out.requires_grad:
            (grad,) = torch.autograd.grad(out, a)
            assert torch.isfinite(grad).all()


@SETTINGS
@given(
    shape_a=st.lists(st.integers(0, 3), max_size=3),
    shape_b=st.lists(st.integers(0, 3), max_size=3),
    as_list=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]),
)
def test_mse_never_crashes(shape_a, shape_b, as_list, dtype):
    a = torch.ones(shape_a).to(dtype)
    b = torch.zeros(shape_b).to(dtype)
    if as_list:  # a nested list cannot express shapes such as (0, 0): it reads back as (0,)
        shape_a = list(torch.as_tensor(a.tolist()).shape)
    try:
        out = L.mse_loss(a.tolist() if as_list else a, b)
    except (ValueError, TypeError) as err:
        assert str(err).startswith("mse_loss:")
        assert shape_a != shape_b
        return
    assert shape_a == shape_b
    assert out.item() == (1.0 if math.prod(shape_a) else 0.0)


@SETTINGS
@given(
    n=st.integers(0, 3),
    c=st.integers(1, 4),
    special=st.sampled_from([None, "nan"]),
    ignore=st.sampled_from([None, 255]),
    dtype=st.sampled_from(DTYPES),
    soft=st.booleans(),
)
def test_cross_entropy_and_bce_never_crash(n, c, special, ignore, dtype, soft):
    g = torch.Generator().manual_seed(n * 10 + c)
    x = torch.randn(n, c, 3, generator=g).to(dtype)
    if special and x.numel():
        x.view(-1)[0] = float("nan")
    y = torch.randint(0, c, (n, 3), generator=g)
    if ignore is not None and y.numel():
        y[0, 0] = ignore
    for name, call in (
        ("cross_entropy_loss", lambda: L.cross_entropy_loss(x, y, ignore_index=ignore)),
        (
            "bce_loss",
            lambda: L.bce_loss(x, torch.rand(n, c, 3, generator=g) if soft else (x > 0).float()),
        ),
    ):
        try:
            out = call()
        except (ValueError, TypeError) as err:
            assert str(err).startswith(f"{name}:")
            assert name == "cross_entropy_loss" and c < 2
            continue
        assert out.dtype == _expected_dtype(dtype)
        # torch's cross-entropy never reads the logits of an ignored pixel (the NaN sits on one)
        if special and x.numel() and not (name == "cross_entropy_loss" and ignore is not None):
            assert torch.isnan(out)
        elif not special:
            assert torch.isfinite(out)
