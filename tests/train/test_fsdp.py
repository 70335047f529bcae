"""``strategy: fsdp`` (FSDP2 ``fully_shard`` + ``torch.distributed.checkpoint``), issue 17.

The 2-process cases are real torchrun launches on CPU/gloo, reusing the launch helpers and the
worker script of ``test_distributed.py`` (same data, same squeezenet, same 4 steps).

Why FSDP and DDP weights are compared with ``torch.equal``: both average the two ranks'
gradients in float32, DDP as ``(g0 + g1) / 2`` (all-reduce), FSDP as the reduce-scatter of
``g0 + g1`` divided by 2 (or each halved first); with 2 ranks these are the same number, since a
float sum of two terms is commutative and halving is exact (no subnormals here). The optimizer
then runs the same SGD formula on each element (FSDP on its shard; fused and foreach kernels gave
the same numbers here). Measured: largest difference 0.0 on an AVX512-BF16 CPU. On an AVX2-only
CPU (2026-12-03) every tensor but one was equal too; one element of the last convolution's bias
differed by 1 ulp (2.3e-10 on 3.0e-3): the batch sum that is that bias's gradient is vectorised
in an order that depends on the buffer's alignment there, and FSDP's flat shards move it. So FSDP
and DDP weights are compared to 2 ulp (``_within_ulps``); an averaging fault (a missing halving, a
rank's shard lost) differs by ~50% or more. Runs of one strategy are compared exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from strop.train import config_from_dict, fit, load_checkpoint
from strop.train.checkpoint import CheckpointError

_spec = importlib.util.spec_from_file_location(
    "_td_helpers", Path(__file__).with_name("test_distributed.py")
)
td = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(td)  # type: ignore[union-attr]

FSDP = {"strategy": "fsdp"}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _within_ulps(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ulps: int = 2) -> None:
    """Equal tensors, floats to ``ulps`` units in the last place (see the module doc)."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if not x.is_floating_point():
            assert torch.equal(x, y), k
            continue
        info = torch.finfo(x.dtype)
        scale = torch.maximum(x.abs(), y.abs()).clamp_min(info.tiny)
        worst = ((x.double() - y.double()).abs() / (scale.double() * info.eps)).max().item()
        assert worst <= ulps, f"{k}: {worst:.1f} ulp apart"


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "over, key",
    [
        ({"ema": {}}, "ema"),
        ({"swa": {"start_epoch": 0, "lr": 0.01}}, "swa"),
        ({"compile": True}, "compile"),
        ({"gradual_unfreeze": {}}, "gradual_unfreeze"),
        ({"sync_batchnorm": True}, "sync_batchnorm"),
        ({"precision": "fp16"}, "precision"),
    ],
)
def test_fsdp_refuses_the_keys_it_does_not_support_naming_them(over, key, tmp_path):
    cfg = td._config(tmp_path, tmp_path / "run", **FSDP, **over)
    with pytest.raises(ValueError, match=rf"config: {key}=.* does not go with strategy: fsdp"):
        config_from_dict(cfg)
    config_from_dict({**cfg, "strategy": "ddp"})  # the same keys are fine under ddp


def test_unknown_strategy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="strategy"):
        config_from_dict(td._config(tmp_path, tmp_path / "run", strategy="zero3"))


def test_one_process_fsdp_trains_the_plain_model_and_says_so(tmp_path):
    from strop.data import write_digits

    root = write_digits(tmp_path / "d", digits=[0, 1], per_class=5, seed=0, size=16)
    lines: list[str] = []
    cfg = td._config(root, tmp_path / "run", **FSDP, epochs=1, data={"batch_size": 8})
    res = fit(config_from_dict(cfg), log=lines.append)
    assert "strategy: fsdp — one process, nothing to shard: plain model" in lines
    assert res.choices["strategy"] == "none"
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    assert "sharded" not in ck and "model" in ck  # an ordinary last.pt
    assert not list((res.run_dir / "checkpoints").glob("last-shards-*"))


# ----------------------------------------------------------------------------- sharded save


@pytest.fixture
def one_rank_group():
    """A 1-process gloo group in this process, so that ``fully_shard`` and DCP run here."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _sharded_parts() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from strop.train.fsdp import shard_model

    torch.manual_seed(0)
    model = shard_model(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    return model, opt


def _payload(step: int) -> dict[str, Any]:
    return {"state": {"step": step}, "config": {}}


@pytest.mark.parametrize("where", ["shards", "rename", "last.pt"])
def test_a_failed_sharded_save_keeps_the_previous_checkpoint(
    where, one_rank_group, tmp_path, monkeypatch
):
    import torch.distributed.checkpoint as dcp

    from strop.train import fsdp

    model, opt = _sharded_parts()
    last = tmp_path / "checkpoints" / "last.pt"
    fsdp.save_sharded(model, opt, _payload(1), last, rank=0)
    before = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    first = load_checkpoint(last)["sharded"]["folder"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # step 2 differs from step 1

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    blocker = last.with_name("last.pt.tmp")
    if where == "last.pt":  # shards renamed into place, then last.pt cannot be replaced
        blocker.mkdir()  # as root nothing is read-only: a folder where last.pt.tmp must go
    else:  # the shards cannot be written, or their folder cannot be renamed into place
        monkeypatch.setattr(*{"shards": (dcp, "save"), "rename": (os, "replace")}[where], denied)
    reason = "Is a directory" if where == "last.pt" else "Permission denied"
    with pytest.raises(CheckpointError, match=rf"could not write .*{last.name}.*{reason}"):
        fsdp.save_sharded(model, opt, _payload(2), last, rank=0)
    monkeypatch.undo()
    if where == "last.pt":
        blocker.rmdir()
    # last.pt still names step 1's complete folder; nothing half-written is left beside it
    ck = load_checkpoint(last)
    assert (ck["state"]["step"], ck["sharded"]["folder"]) == (1, first)
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(["last.pt", first])
    fsdp.load_sharded(model, opt, ck, last)
    for k, v in model.state_dict().items():
        assert torch.equal(v.full_tensor(), before[k]), k


def test_a_mid_run_fsdp_last_pt_is_refused_by_export_with_one_line(one_rank_group, tmp_path):
    from strop.train.fsdp import require_full_model, save_sharded

    model, opt = _sharded_parts()
    last = save_sharded(model, opt, _payload(3), tmp_path / "last.pt", rank=0)
    with pytest.raises(
        CheckpointError,
        match=r"is a mid-run fsdp checkpoint: its model is sharded in last-shards-00000003-",
    ):
        require_full_model(load_checkpoint(last), last)
    full = save_sharded(model, opt, _payload(4), tmp_path / "last.pt", rank=0, full_model=True)
    state = require_full_model(load_checkpoint(full), full)
    _equal(state, {k: v.full_tensor() for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------- 2 processes


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One launch: ddp, fsdp, then fsdp SIGTERMed at step 3 (mid-epoch 2), on 2 gloo processes."""
    from strop.data import write_digits

    base = tmp_path_factory.mktemp("fsdp")
    root = write_digits(base / "digits", digits=[0, 1, 2, 3], per_class=10, seed=0, size=16)
    cfgs = {
        name: td._config(root, base / name, **over)
        for name, over in (("ddp", {}), ("fsdp", FSDP), ("cut", FSDP))
    }
    rc, out, _ = td._run_driver(
        [
            {"config": cfgs["ddp"], "report": str(base / "ddp.json")},
            {"config": cfgs["fsdp"], "report": str(base / "fsdp.json")},
            {
                "config": cfgs["cut"],
                "report": str(base / "cut.json"),
                "action": "sigterm_launcher",
                "rank": 1,
                "step": 3,
            },
        ],
        base,
    )
    return {"base": base, "root": root, "cfgs": cfgs, "rc": rc, "out": out}


@pytest.mark.slow
def test_fsdp_on_two_processes_reaches_the_ddp_weights_and_reads_like_any_run(launched):
    base = launched["base"]
    assert (base / "fsdp.json.rank0").is_file() and (base / "fsdp.json.rank1").is_file(), launched[
        "out"
    ][-3000:]
    assert json.loads((base / "fsdp" / "run.json").read_text())["strategy"] == "fsdp"
    assert json.loads((base / "ddp" / "run.json").read_text())["strategy"] == "ddp"
    ddp = td._weights(base / "ddp")
    last = load_checkpoint(base / "fsdp" / "checkpoints" / "last.pt")
    assert last["state"]["step"] == td.STEPS and "sharded" in last
    _within_ulps(last["model"], ddp)  # see the module doc for why (nearly) equal
    # best.pt is the gathered model, as under ddp (best is epoch 2 in both)
    _within_ulps(
        load_checkpoint(base / "fsdp" / "checkpoints" / "best.pt")["model"],
        load_checkpoint(base / "ddp" / "checkpoints" / "best.pt")["model"],
    )
    shards = base / "fsdp" / "checkpoints" / last["sharded"]["folder"]
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert sorted(p.name for p in shards.parent.iterdir()) == sorted(
        ["best.pt", "last.pt", shards.name]
    )
    from safetensors.torch import load_file

    from strop.train.inference import export_weights

    _within_ulps(
        load_file(export_weights(base / "fsdp", checkpoint="last", out=base / "w.safetensors")), ddp
    )


@pytest.mark.slow
def test_an_interrupted_fsdp_run_keeps_shards_and_resumes_on_one_process(launched, capsys):
    from strop.cli import main

    base, run = launched["base"], launched["base"] / "cut"
    assert launched["rc"] != 0  # the launch was stopped
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["state"]["step"] == 3 and ck["state"]["interrupted"] is not None
    assert "model" not in ck and "optimizer" not in ck and ck["sharded"]["world_size"] == 2
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert main(["export", str(run), "--checkpoint", "last"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a mid-run fsdp checkpoint" in err[0], err
    # DCP reshards: 2 shards load into one process's plain model (same global batch)
    fit(config_from_dict(launched["cfgs"]["cut"]), resume=True, log=lambda m: None)
    assert td._max_diff(td._weights(run), td._weights(base / "fsdp")) < td.ACROSS_WORLD_ATOL
    assert td._max_diff(td._weights(run), td._weights(base / "ddp")) < td.ACROSS_WORLD_ATOL


@pytest.mark.slow
def test_sigkill_under_max_restarts_resumes_fsdp_from_its_shards_with_equal_weights(
    launched, tmp_path
):
    run = tmp_path / "run"
    cfg = td._config(launched["root"], run, **FSDP, checkpoint_every_steps=1)
    # one spare restart: once in a full-suite run (1 of 6 runs of this test seen, 2026-12-02) a
    # restarted gloo worker aborted on its own ("terminate called without an active exception",
    # SIGABRT, in torch's C++ after resuming), a known class of gloo failures; a user runs
    # torchrun with restarts to survive exactly that, and the weights must still come out equal
    rc, out = td._launch_with_rank1_killed(cfg, tmp_path, step=4, max_restarts=2)
    assert rc == 0, out[-4000:]
    assert "failed (exitcode: -9) local_rank: 1" in out, out[-3000:]  # the SIGKILL happened
    assert (
        "restarted by torchrun (TORCHELASTIC_RESTART_COUNT=1): resuming from checkpoints/last.pt"
        in out
    )
    assert "at epoch 2, batch 1, step 3" in out  # from the step-3 shards
    # same world size, same operations: equal to the uninterrupted fsdp run
    _equal(
        td._weights(run),
        load_checkpoint(launched["base"] / "fsdp" / "checkpoints" / "last.pt")["model"],
    )
    assert len(list((run / "checkpoints").glob("last-shards-*"))) == 1  # older shards pruned
