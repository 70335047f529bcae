"""Start-up: what is imported before it is needed (issue 16). Each check is a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import strop

SRC = Path(strop.__file__).resolve().parents[1]

# never needed before the first optimizer step of a classification run: plots and diagnostics
# (after training), scikit-learn (bundled data is written once; metrics after training), export,
# TensorBoard (only when asked for), strop's detection code
LATER = (
    "matplotlib",
    "sklearn",
    "pandas",
    "safetensors",
    "torch.utils.tensorboard",
    "strop.plots",
    "strop.train.report",
    "strop.train.review",
    "strop.train.diagnostics",
    "strop.train.inference",
    "strop.train.detection",
    "strop.train.detection_predict",
    "strop.finetune.detection",
    "strop.data.detection",
)


def _loaded_after(code: str, *args: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after ``code``, which must print them as JSON
    (``code`` sets ``mods``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    code += "\nimport json, sys\nprint(json.dumps(sorted(mods)))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _offenders(mods: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in mods)


def test_the_cli_and_its_help_import_no_torch():
    mods = _loaded_after(
        "import sys, strop.cli\nstrop.cli.build_parser().format_help()\nmods = set(sys.modules)"
    )
    assert "strop.cli" in mods
    assert _offenders(mods, ("torch", "torchvision", "numpy", "pydantic", "yaml", "PIL")) == []


def test_import_strop_train_loads_no_plots_sklearn_or_detection():
    mods = _loaded_after("import sys, strop.train\nmods = set(sys.modules)")
    assert "strop.train.trainer" in mods
    assert _offenders(mods, LATER) == []


def test_a_classification_run_loads_none_of_them_before_its_first_step(tmp_path):
    from strop.data import write_digits

    root = write_digits(tmp_path / "digits", digits=[0, 1], per_class=6, size=16)
    cfg = {
        "data": {"root": str(root), "image_size": 16, "batch_size": 4, "num_workers": 0},
        "model": {"name": "resnet18", "weights": None},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "epochs": 1,
        "progress": False,
        "output": str(tmp_path / "run"),
    }
    code = """
import json, os, sys
import strop.train

class FirstStep:
    def on_batch_end(self, state, logs):
        print(json.dumps(sorted(sys.modules)), flush=True)
        os._exit(0)

strop.train.fit(strop.train.config_from_dict(json.loads(sys.argv[1])), callbacks=[FirstStep()])
mods = ()  # not reached: the first step exits
"""
    mods = _loaded_after(code, json.dumps(cfg))
    assert "torchvision" in mods and "strop.train.loop" in mods  # it did train
    assert _offenders(mods, LATER) == []
