"""SIGKILL-safe detection training: a real ``python -m strop train`` of a detector is SIGKILLed
mid-epoch, resumed from ``last.pt``, and ends with the weights of an uninterrupted run, bit for
bit (``torch.equal``), ``best.pt`` and the per-step CSV rows included.

The harness is ``tools/crash_harness.py`` (the one ``tests/train/test_crash_safety.py`` uses);
only its config changes: Faster R-CNN MobileNetV3 from scratch on the bundled shapes. That model
draws random samples of anchors and proposals at every step and has plain BatchNorm, recalibrated
before each validation in its own RNG stream, so the resumed run must restore the RNG state and
the BatchNorm buffers exactly to match.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_harness():
    spec = importlib.util.spec_from_file_location(
        "crash_harness", ROOT / "tools" / "crash_harness.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


harness = _load_harness()


class DetectionWorkspace(harness.Workspace):
    """The harness's workspace with a detection config (every run it starts uses this)."""

    def config(self, output: Path, *, path: Path | None = None, **over: Any) -> Path:
        detection = {
            "task": "detection",
            "data": {
                "root": str(self.data),
                "image_size": 48,
                "batch_size": 2,
                "augment": "flip",
                "num_workers": 0,
            },
            "model": {"name": "fasterrcnn_mobilenet_v3_large_320_fpn"},
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
        }
        return super().config(output, path=path, **{**detection, **over})


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from strop.data.shapes_detection import write_shapes_detection

    root = tmp_path_factory.mktemp("det_crash")
    data = write_shapes_detection(root / "shapes", n_train=6, n_val=2, size=64, seed=2)
    return DetectionWorkspace(root=root, data=data, epochs=2, checkpoint_every_steps=1)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(ws):
    ref = harness.run_reference(ws)
    assert ref.writes == 8  # 2 epochs × (3 steps + the epoch end), a checkpoint after each
    # trial 1's first kill is the "step" mode: a random delay (under 1.5 step times) after the
    # n-th checkpoint; with seed 2 the harness draws n = 1 (delay 0.14 step): inside epoch 1's
    # second step (or its third, on a busy machine)
    trial = harness.run_trial(ws, ref, 1, random.Random(2), kill_budget=1)
    logs = sorted(ws.root.glob("trial001-*.log"))
    assert trial.kills == 1 and trial.modes == ["step"], trial
    assert trial.completed and not trial.failures and trial.unreadable_checkpoints == 0, trial
    assert trial.resumes == trial.resumes_loaded == 1, [p.read_text()[-2000:] for p in logs]
    resumed = logs[-1].read_text()
    # mid-epoch: the resumed run starts inside an epoch, after at least one of its batches
    line = next(ln for ln in resumed.splitlines() if "resumed from" in ln)
    batch = int(line.split(", batch ")[1].split(",")[0])
    assert 0 < batch < 3, line
    assert trial.weights_equal and trial.best_equal and trial.steps_equal, trial.detail
