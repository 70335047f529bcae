"""Files strop reads are data, never code: crafted checkpoints and configs are refused by every
entry point that reads them, and ``strop export --format safetensors`` writes the weights exactly.

A crafted checkpoint is a pickle whose loading would call something (open a file, run a shell
command, exec source); each test checks that the call did not happen (its marker file is absent),
the command failed with one clear line, and nothing was written.
"""

import builtins
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from strop.cli import main
from strop.data import write_digits
from strop.train import config_from_dict, fit, load_checkpoint
from strop.train.checkpoint import CheckpointError


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch run (mobilenet_v3_small on 16×16 digits): best.pt and last.pt."""
    base = tmp_path_factory.mktemp("export")
    root = write_digits(base / "digits", digits=[0, 1, 2], per_class=20, seed=0, size=16)
    config = config_from_dict(
        {
            "data": {
                "root": str(root),
                "image_size": 16,
                "batch_size": 8,
                "val_fraction": 0.25,
                "num_workers": 0,
            },
            "model": {"name": "mobilenet_v3_small"},
            "optimizer": {"name": "adamw", "lr": 0.003},
            "precision": "fp32",
            "memory_format": "contiguous",
            "feature_cache": "off",
            "epochs": 1,
            "seed": 0,
            "progress": False,
            "output": str(base / "run"),
        }
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(config, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    return base / "run"


# ------------------------------------------------------------------------------- export


@pytest.mark.parametrize("which", ["best", "last"])
def test_export_safetensors_equals_the_checkpoint_weights(run_dir, tmp_path, capsys, which):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / f"{which}.safetensors"
    assert (
        main(
            [
                "export",
                str(run_dir),
                "--format",
                "safetensors",
                "--checkpoint",
                which,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    exported = load_file(str(out))
    expected = load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")["model"]
    assert exported.keys() == expected.keys()
    for k, v in expected.items():
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    with safe_open(str(out), "pt") as fh:
        assert fh.metadata() == {"model": "mobilenet_v3_small", "num_classes": "3"}


def test_export_defaults_to_best_safetensors_in_the_run_folder(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["export", str(run)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == run / "model.safetensors"
    best = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(load_file(str(path))[k], v) for k, v in best.items())


def test_export_pt_is_a_plain_state_dict_loadable_with_weights_only(run_dir, tmp_path):
    out = tmp_path / "w.pt"
    assert main(["export", str(run_dir), "--format", "pt", "--out", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    assert state.keys() == best.keys() and all(torch.equal(state[k], v) for k, v in best.items())


# ------------------------------------------------------------------------- crafted files


class _Call:
    """Pickles as "call ``fn(*args)``": what a malicious checkpoint does on a trusting load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _open(marker):
    return _Call(builtins.open, str(marker), "w")


def _system(marker):
    return _Call(os.system, f"touch {marker}")


def _exec(marker):
    return _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()")


def _write(kind, path, marker):
    """Write a crafted checkpoint of ``kind`` at ``path``; a trusting load would create ``marker``."""
    payload = {"format_version": 1, "config": {}, "num_classes": 3, "classes": ["0", "1", "2"]}
    if kind == "zip-open":
        torch.save({**payload, "model": {"w": _open(marker)}}, path)
    elif kind == "zip-system":
        torch.save({**payload, "model": {"w": torch.zeros(1)}, "state": _system(marker)}, path)
    elif kind == "zip-exec":
        torch.save({**payload, "model": _exec(marker)}, path)
    elif kind == "legacy-open":  # torch's pre-1.6 (non-zip) format
        torch.save(
            {**payload, "model": {"w": _open(marker)}}, path, _use_new_zipfile_serialization=False
        )
    elif kind == "plain-pickle":  # not a torch file at all
        with open(path, "wb") as fh:
            pickle.dump({**payload, "model": _system(marker)}, fh, protocol=2)
    else:
        raise AssertionError(kind)


KINDS = ["zip-open", "zip-system", "zip-exec", "legacy-open", "plain-pickle"]


def _assert_refused_in_one_line(err, path):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("strop ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"could not read checkpoint {path}" in lines[0] and "refused" in lines[0], lines[0]
    assert "\x1b" not in err and "weights_only` set to `False" not in err, (
        "torch's unsafe advice leaked"
    )


@pytest.fixture
def crafted_run(run_dir, tmp_path):
    """``make(kind) -> (run folder, marker)``: a copy of the run with crafted best.pt and last.pt."""

    def make(kind):
        run = tmp_path / f"run-{kind}"
        shutil.copytree(run_dir, run)
        marker = tmp_path / f"created-by-{kind}"
        for which in ("best", "last"):
            _write(kind, run / "checkpoints" / f"{which}.pt", marker)
        return run, marker

    return make


@pytest.mark.parametrize("kind", KINDS)
def test_load_checkpoint_refuses_crafted_files(crafted_run, kind):
    run, marker = crafted_run(kind)
    with pytest.raises(CheckpointError, match=r"could not read checkpoint .*best\.pt: refused"):
        load_checkpoint(run / "checkpoints" / "best.pt")
    assert not marker.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["eval", "export", "predict", "train --resume"])
def test_every_command_refuses_crafted_checkpoints(crafted_run, capsys, kind, command):
    run, marker = crafted_run(kind)
    if command == "train --resume":
        cfg = run.parent / f"{run.name}.yaml"
        data = yaml.safe_load((run / "config.yaml").read_text())
        cfg.write_text(yaml.safe_dump({**data, "output": str(run)}))
        argv, read = ["train", str(cfg), "--resume"], run / "checkpoints" / "last.pt"
    elif command == "predict":
        image = next(
            (
                Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]) / "0"
            ).iterdir()
        )
        argv, read = ["predict", str(run), str(image)], run / "checkpoints" / "best.pt"
    else:
        argv, read = [command, str(run)], run / "checkpoints" / "best.pt"
    before = sorted(p.name for p in run.iterdir())
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc not in (0, 130)
    _assert_refused_in_one_line(err, read)
    assert not marker.exists(), "the crafted pickle ran"
    if command == "export":
        assert sorted(p.name for p in run.iterdir()) == before  # no model.safetensors written


def test_yaml_configs_are_read_with_a_safe_loader(tmp_path, capsys):
    marker = tmp_path / "created-by-yaml"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"epochs: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"strop train: error: invalid config {cfg}: not valid YAML"), err
    assert not marker.exists()
