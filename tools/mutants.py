"""Hand-written mutation testing: does the suite notice a plausible bug?

Each mutant is ``(file under src/strop, exact original snippet, replacement, test files, what it
breaks)``. The repository (``src``, ``tests``, ``pyproject.toml``) is copied once into a temporary
folder; each mutant is applied there alone, its test files run with ``pytest -x -q`` on one torch
thread, and the file is put back. A mutant is

- ``killed``      when the tests fail (or time out),
- ``survived``    when they pass — a test is missing, or the mutant is equivalent (say why below),
- ``n/a``         when its snippet is not found exactly once (the code moved: re-point the mutant).

Not part of CI (slow: minutes). Usage::

    python tools/mutants.py                  # every mutant
    python tools/mutants.py -k plateau -k dice  # mutants whose id contains a word
    python tools/mutants.py --list           # the table of mutants, nothing run
    python tools/mutants.py --baseline       # first check that every test set passes unmutated
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to src/strop
    original: str
    replacement: str
    tests: tuple[str, ...]
    note: str = ""


LOSS_TESTS = (
    "tests/losses/test_losses_values.py",
    "tests/losses/test_reductions.py",
    "tests/losses/test_losses_reference.py",
)
FOCAL_TESTS = (
    "tests/losses/test_losses_values.py",
    "tests/losses/test_fused.py",
    "tests/losses/test_losses_reference.py",
)
SCHED_TESTS = (
    "tests/schedules/test_scheduler.py",
    "tests/schedules/test_torch_equivalence.py",
    "tests/schedules/test_custom.py",
)
FT_TESTS = ("tests/finetune/test_heads_forward.py", "tests/finetune/test_finetune_freeze_groups.py")
WEIGHTS_TESTS = ("tests/finetune/test_finetune_weights.py",)
DATA_TESTS = (
    "tests/data/test_folders.py",
    "tests/data/test_make_loader.py",
    "tests/data/test_bundled.py",
    "tests/data/test_decode_and_batch.py",
)
PREC_TESTS = ("tests/test_precision.py",)
FIT = "tests/train/test_fit_correctness.py"
TRAIN_TESTS = (FIT, "tests/train/test_callbacks.py")

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ losses
    Mutant(
        "dice-smooth-num",
        "losses/segmentation.py",
        "loss = 1 - _ratio(2 * tp + smooth, sum_p + sum_t + smooth)",
        "loss = 1 - _ratio(2 * tp, sum_p + sum_t + smooth)",
        LOSS_TESTS,
        "smooth dropped from Dice's numerator",
    ),
    Mutant(
        "dice-factor-2",
        "losses/segmentation.py",
        'dice = reduce(1 - _ratio(2 * tp + smooth, sum_p + sum_t + smooth), "mean")',
        'dice = reduce(1 - _ratio(tp + smooth, sum_p + sum_t + smooth), "mean")',
        LOSS_TESTS,
        "dice_bce's Dice without the 2",
    ),
    Mutant(
        "jaccard-union",
        "losses/segmentation.py",
        "_ratio(tp + smooth, sum_p + sum_t - tp + smooth)",
        "_ratio(tp + smooth, sum_p + sum_t + smooth)",
        LOSS_TESTS,
        "Jaccard union counts TP twice",
    ),
    Mutant(
        "tversky-alpha-beta",
        "losses/segmentation.py",
        "tp + alpha * fp + beta * fn + smooth",
        "tp + beta * fp + alpha * fn + smooth",
        LOSS_TESTS,
        "alpha and beta swapped",
    ),
    Mutant(
        "tversky-gamma",
        "losses/segmentation.py",
        "loss = loss.clamp_min(0).pow(gamma)",
        "loss = loss.clamp_min(0).pow(1 / gamma)",
        LOSS_TESTS,
        "focal-Tversky exponent inverted",
    ),
    Mutant(
        "ratio-empty",
        "losses/segmentation.py",
        "return (num + empty) / (den + empty)",
        "return num / (den + empty)",
        LOSS_TESTS,
        "empty class scores 0 instead of perfect",
    ),
    Mutant(
        "reduce-sum-is-mean",
        "losses/_prepare.py",
        """    if reduction == "sum":
        return total""",
        """    if reduction == "sum":
        return total / max(loss.numel(), 1)""",
        LOSS_TESTS,
        "reduction='sum' averages",
    ),
    Mutant(
        "reduce-none-masked",
        "losses/_prepare.py",
        """    if valid is not None:
        loss = loss * valid
    if reduction == "none":""",
        """    if reduction == "none":
        return loss
    if valid is not None:
        loss = loss * valid
    if reduction == "none":""",
        LOSS_TESTS,
        "reduction='none' keeps ignored elements",
    ),
    Mutant(
        "reduce-mean-all",
        "losses/_prepare.py",
        "return total / count.clamp_min(1).to(total.dtype)",
        "return total / loss.numel()",
        LOSS_TESTS,
        "masked mean divides by all elements",
    ),
    # (overlap_plain's softmax is reached only as the fused path's reference in test_fused.py,
    # hence FOCAL_TESTS)
    Mutant(
        "probs-sigmoid-multiclass",
        "losses/_fused.py",
        """    elif mode == "multiclass":
        probs = torch.softmax(x, dim=1)
    else:""",
        """    elif mode == "multiclass":
        probs = torch.sigmoid(x)
    else:""",
        FOCAL_TESTS,
        "plain (reference) overlap uses sigmoid for multiclass",
    ),
    Mutant(
        "fused-tp-multiclass",
        "losses/_fused.py",
        "        probs = torch.softmax(x, dim=1)\n        p_label",
        "        probs = torch.sigmoid(x)\n        p_label",
        LOSS_TESTS,
        "fused multiclass TP from sigmoid",
    ),
    Mutant(
        "onehot-ignore",
        "losses/_prepare.py",
        """        if self.valid is not None:
            out.mul_(self.valid)
        return out""",
        """        return out""",
        LOSS_TESTS,
        "ignored pixels stay in the one-hot target",
    ),
    Mutant(
        "focal-alpha-t",
        "losses/classification.py",
        "loss = loss * ((1 - alpha) + t * (2 * alpha - 1))",
        "loss = loss * (alpha + t * (1 - 2 * alpha))",
        FOCAL_TESTS,
        "alpha weighs the wrong class",
    ),
    Mutant(
        "focal-q",
        "losses/classification.py",
        "one_minus_pt = torch.lerp(torch.sigmoid(x), torch.sigmoid(-x), t)",
        "one_minus_pt = torch.lerp(torch.sigmoid(x), torch.sigmoid(-x), t * 0.5)",
        FOCAL_TESTS,
        "1 - p_t wrong for positives",
    ),
    Mutant(
        "focal-multiclass-weight0",
        "losses/classification.py",
        "                weights[0] = 1 - alpha",
        "                weights[0] = alpha",
        FOCAL_TESTS,
        "background weight alpha instead of 1 - alpha",
    ),
    # --------------------------------------------------------------- schedules
    Mutant(
        "warmup-progress",
        "schedules/functional.py",
        "progress = step / max(1, warmup_steps)",
        "progress = (step + 1) / max(1, warmup_steps)",
        SCHED_TESTS,
        "warmup off by one step",
    ),
    Mutant(
        "warmup-end",
        "schedules/functional.py",
        """    if step >= warmup_steps:
        return 1.0""",
        """    if step > warmup_steps:
        return 1.0""",
        SCHED_TESTS,
        "warmup boundary",
    ),
    Mutant(
        "cosine-min-lr",
        "schedules/functional.py",
        "return min_lr_rate + (1.0 - min_lr_rate) * cos",
        "return min_lr_rate + cos",
        SCHED_TESTS,
        "cosine floor added, not interpolated",
    ),
    Mutant(
        "cosine-restarts",
        "schedules/functional.py",
        "math.cos(math.pi * ((restarts * p) % 1.0))",
        "math.cos(math.pi * p)",
        SCHED_TESTS,
        "restarts ignored",
    ),
    Mutant(
        "progress-clamp",
        "schedules/functional.py",
        "return min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))",
        "return (step - warmup_steps) / max(1, total_steps - warmup_steps)",
        SCHED_TESTS,
        "past the horizon the LR leaves its floor",
    ),
    Mutant(
        "linear-decay",
        "schedules/functional.py",
        "return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))",
        "return max(0.0, (total_steps - step) / max(1, total_steps))",
        SCHED_TESTS,
        "linear decay ignores warmup",
    ),
    Mutant(
        "poly-power",
        "schedules/functional.py",
        "return (1.0 - end_rate) * remaining**power + end_rate",
        "return (1.0 - end_rate) * remaining + end_rate",
        SCHED_TESTS,
        "poly power ignored",
    ),
    Mutant(
        "inverse-sqrt",
        "schedules/functional.py",
        "return 1.0 / math.sqrt((step + timescale - warmup_steps) / timescale)",
        "return 1.0 / math.sqrt((step + timescale) / timescale)",
        SCHED_TESTS,
        "inverse sqrt not shifted",
    ),
    Mutant(
        "horizon-round",
        "schedules/scheduler.py",
        "    return round(epochs * steps_per_epoch)",
        "    return int(epochs * steps_per_epoch) - 1",
        SCHED_TESTS,
        "horizon one step short",
    ),
    # ---------------------------------------------------------------- finetune
    Mutant(
        "head-in-features",
        "finetune/heads.py",
        "layer: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)",
        "layer: nn.Module = nn.Linear(old.in_features, num_classes, bias=True)",
        FT_TESTS,
        "head gains a bias it did not have",
    ),
    Mutant(
        "head-conv-kernel",
        "finetune/heads.py",
        "            old.kernel_size,\n            old.stride,",
        "            1,\n            old.stride,",
        FT_TESTS,
        "segmentation head kernel forced to 1x1",
    ),
    Mutant(
        "head-aux-skipped",
        "finetune/heads.py",
        "    for path in spec.output_layers:",
        "    for path in spec.output_layers[:1]:",
        FT_TESTS,
        "aux heads keep 1000 classes",
    ),
    Mutant(
        "head-num-classes-attr",
        "finetune/heads.py",
        "        model.num_classes = num_classes",
        "        pass",
        FT_TESTS,
        "squeezenet's num_classes attribute stale",
    ),
    Mutant(
        "freeze-bn-train",
        "finetune/freeze.py",
        "p.requires_grad_(not frozen or id(p) in bn_ids)",
        "p.requires_grad_(not frozen)",
        FT_TESTS,
        "train_bn=True leaves BN frozen",
    ),
    Mutant(
        "groups-head-lr",
        "finetune/groups.py",
        'out += _split("head", keep(head), lr * head_lr_mult, weight_decay, {})',
        'out += _split("head", keep(head), lr, weight_decay, {})',
        FT_TESTS,
        "head_lr_mult ignored",
    ),
    Mutant(
        "groups-layer-decay",
        "finetune/groups.py",
        "lr * layer_decay ** (len(stages) - i)",
        "lr * layer_decay ** i",
        FT_TESTS,
        "layer decay reversed (stem gets the highest LR)",
    ),
    Mutant(
        "weights-sha-skipped",
        "finetune/weights.py",
        """    if sha256 is not None:
        _check_sha256(func, path, sha256)""",
        """    if False:
        _check_sha256(func, path, sha256)""",
        WEIGHTS_TESTS,
        "sha256 of a file never checked",
    ),
    # -------------------------------------------------------------------- data
    Mutant(
        "split-round",
        "data/_scan.py",
        "return min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)",
        "return min(max(int(n * fraction), 1), n - 1)",
        DATA_TESTS,
        "validation count floors",
    ),
    Mutant(
        "split-overlap",
        "data/_scan.py",
        "return [i for i in range(len(t)) if i not in val_set], sorted(val)",
        "return list(range(len(t))), sorted(val)",
        DATA_TESTS,
        "validation images also in training",
    ),
    Mutant(
        "split-seed",
        "data/_scan.py",
        "    rng = np.random.default_rng(seed)\n    val: list[int] = []",
        "    rng = np.random.default_rng(0)\n    val: list[int] = []",
        DATA_TESTS,
        "split ignores the seed",
    ),
    Mutant(
        "normalize-scale",
        "data/transforms.py",
        "scaled = image.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255)",
        "scaled = image.to(torch.float32, memory_format=torch.contiguous_format)",
        DATA_TESTS,
        "uint8 not scaled to [0, 1]",
    ),
    Mutant(
        "seed-worker-numpy",
        "data/loaders.py",
        "    np.random.seed(seed)\n",
        "",
        DATA_TESTS,
        "NumPy not seeded in workers",
    ),
    # --------------------------------------------------------------- precision
    Mutant(
        "auto-cpu-fp32",
        "precision.py",
        '    if name == "auto" and fast:',
        '    if name == "auto" and not fast:',
        PREC_TESTS,
        "auto picks bf16 on a CPU without bf16",
    ),
    Mutant(
        "auto-cuda-ampere",
        "precision.py",
        '    if name == "auto" and cap >= (8, 0):',
        '    if name == "auto" and cap > (8, 0):',
        PREC_TESTS,
        "Ampere (8.0) gets fp16",
    ),
    Mutant(
        "bf16-cuda-check",
        "precision.py",
        '    if name == "bf16" and cap < (8, 0):',
        '    if name == "bf16" and cap < (7, 0):',
        PREC_TESTS,
        "bf16 allowed on Volta",
    ),
    Mutant(
        "scaler-unscale",
        "precision.py",
        "            self.scaler.unscale_(optimizer)\n",
        "",
        (*PREC_TESTS, FIT),
        "clipping before the fp16 unscale",
    ),
    Mutant(
        "scaler-skip-count",
        "precision.py",
        "stepped = self.scaler.get_scale() >= scale",
        "stepped = True",
        PREC_TESTS,
        "skipped fp16 steps not counted",
    ),
    # ------------------------------------------------- train (re-point after the redesign)
    Mutant(
        "plateau-mode",
        "train/setup.py",
        '            extra["mode"] = config.monitor_direction',
        "            pass",
        (FIT,),
        "issue 11: plateau in torch's default mode 'min'",
    ),
    Mutant(
        "best-direction",
        "train/metrics.py",
        'return value > best + min_delta if mode == "max" else value < best - min_delta',
        'return value < best - min_delta if mode == "max" else value > best + min_delta',
        (FIT,),
        "best.pt keeps the worst epoch",
    ),
    Mutant(
        "best-ignores-mode",
        "train/trainer.py",
        "logs.get(config.monitor_metric), state.best_metric, config.monitor_direction",
        'logs.get(config.monitor_metric), state.best_metric, "min" if "loss" in config.monitor_metric else "max"',
        (FIT,),
        "monitor_mode ignored by best.pt",
    ),
    Mutant(
        "early-stop-mode",
        "train/setup.py",
        "config.monitor_metric, config.monitor_direction, es.patience, es.min_delta",
        'config.monitor_metric, "max", es.patience, es.min_delta',
        (FIT,),
        "early stopping always maximises",
    ),
    Mutant(
        "early-stop-compare",
        "train/callbacks.py",
        "if is_better(value, self.best, self.mode, self.min_delta):",
        "if not is_better(value, self.best, self.mode, self.min_delta):",
        TRAIN_TESTS,
        "early stopping comparison flipped",
    ),
    Mutant(
        "accum-divide",
        "train/loop.py",
        "        run.amp.backward(loss / group if group > 1 else loss)",
        "        run.amp.backward(loss)",
        (FIT,),
        "accumulated loss not averaged",
    ),
    Mutant(
        "accum-short-group",
        "train/loop.py",
        "group = min(accum, total - (state.batch_in_epoch // accum) * accum)",
        "group = accum",
        (FIT,),
        "short last group divided by accumulation_steps",
    ),
    Mutant(
        "accum-every-batch",
        "train/loop.py",
        "at_boundary = state.batch_in_epoch % accum == 0 or state.batch_in_epoch == total",
        "at_boundary = True",
        (FIT,),
        "a step every micro-batch",
    ),
    Mutant(
        "clip-skipped",
        "precision.py",
        "            torch.nn.utils.clip_grads_with_norm_(params, clip_grad_norm, norm)\n",
        "",
        (FIT,),
        "fp32/bf16 clipping skipped",
    ),
    Mutant(
        "aux-weight",
        "finetune/heads.py",
        "        loss = loss + aux_weight * a",
        "        loss = loss + 0.4 * a",
        (FIT,),
        "aux_weight ignored",
    ),
    Mutant(
        "aux-dropped",
        "finetune/heads.py",
        "    for a in aux_losses:\n        loss = loss + aux_weight * a",
        "    for a in aux_losses[:0]:\n        loss = loss + aux_weight * a",
        (FIT,),
        "aux losses dropped",
    ),
    Mutant(
        "eval-train-mode",
        "train/loop.py",
        "    was_training = model.training\n    model.eval()",
        "    was_training = model.training",
        ("tests/train/test_evaluate.py", FIT),
        "evaluate in train mode",
    ),
    Mutant(
        "eval-not-restored",
        "train/loop.py",
        "    model.train(was_training)\n",
        "",
        ("tests/train/test_evaluate.py",),
        "evaluate leaves the model in eval mode",
    ),
    Mutant(
        "eval-dice-background",
        "train/metrics.py",
        "    present[0] = False",
        "    pass",
        ("tests/train/test_evaluate.py",),
        "Dice/IoU average in the background",
    ),
    Mutant(
        "eval-iou",
        "train/metrics.py",
        "iou = float((tp / (tp + fp + fn).clamp_min(1))[present].mean())",
        "iou = float((tp / (tp + fp).clamp_min(1))[present].mean())",
        ("tests/train/test_evaluate.py",),
        "IoU is precision",
    ),
    Mutant(
        "eval-accuracy-denominator",
        "train/tasks.py",
        '"val_accuracy": float(totals[2]) / c}',
        '"val_accuracy": float(totals[2]) / max(c - 1, 1.0)}',
        ("tests/train/test_evaluate.py",),
        "accuracy divided by N - 1",
    ),
    Mutant(
        "shuffle-epoch",
        "train/sampler.py",
        "        self.set_epoch(epoch)  # type: ignore[attr-defined]\n",
        "",
        (FIT,),
        "every epoch sees the same order",
    ),
    Mutant(
        "step-noop",
        "train/loop.py",
        "            _optimizer_step(run, state, group_bad)",
        "            run.optimizer.zero_grad(set_to_none=True)",
        (f"{FIT}::test_the_fixture_learns",),
        "the optimizer never steps",
    ),
    Mutant(
        "eval-fit-train-mode",
        "train/loop.py",
        "    was_training = model.training\n    model.eval()",
        "    was_training = model.training",
        (f"{FIT}::test_logged_val_metrics_equal_an_independent_eval_of_best_pt",),
        "evaluate in train mode, seen through fit's logged metrics",
    ),
    Mutant(
        "eval-run-batches",
        "train/setup.py",
        'return per_rank if config.task == "detection" else max(per_rank, 64)',
        "return per_rank",
        ("tests/train/test_val_batch.py",),
        "validation runs at the training batch (a few-shot batch of 10 made it the slowest part)",
    ),
    Mutant(
        "resume-rng",
        "train/state.py",
        '    restore_rng(checkpoint["rng"])\n',
        "",
        (FIT,),
        "RNG not restored on resume",
    ),
]


def _copy_repo(dst: Path) -> None:
    for name in ("src", "tests"):
        shutil.copytree(
            ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def _run_tests(work: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, float, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(work / "src"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "STROP_DATA": str(work / ".data"),
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "timeout"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = lines[-1] if lines else ""
    # the test that caught the mutant (pytest's short summary, -ra): "FAILED path::test - reason"
    failed = next(
        (
            ln.split()[1]
            for ln in lines
            if ln.startswith(("FAILED ", "ERROR ")) and len(ln.split()) > 1
        ),
        "",
    )
    return (
        proc.returncode == 0,
        time.perf_counter() - t0,
        f"{summary}  {failed.split('/')[-1]}".strip(),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-k", dest="only", action="append", default=[], help="run mutants whose id contains this"
    )
    ap.add_argument(
        "--list", action="store_true", help="print the mutants (and whether each applies) and exit"
    )
    ap.add_argument(
        "--baseline", action="store_true", help="check each test set passes unmutated first"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds per mutant (a timeout counts as killed)",
    )
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(w in m.id for w in args.only)]
    if args.list:
        for m in mutants:
            target = ROOT / "src" / "strop" / m.path
            count = target.read_text().count(m.original) if target.is_file() else 0
            where = "ok" if count == 1 else f"n/a ({count} matches)"
            print(f"{m.id:28s} {m.path:28s} {where:14s} {m.note}")
        print(f"{len(mutants)} mutants")
        return 0
    with tempfile.TemporaryDirectory(prefix="strop-mutants-") as tmp:
        work = Path(tmp)
        _copy_repo(work)
        if args.baseline:
            for tests in sorted({m.tests for m in mutants}):
                ok, secs, tail = _run_tests(work, tests, args.timeout)
                print(
                    f"baseline {'ok ' if ok else 'FAILED'} {secs:6.1f}s {' '.join(tests)}  {tail}",
                    flush=True,
                )
                if not ok:
                    return 2
        rows = []
        for m in mutants:
            target = work / "src" / "strop" / m.path
            text = target.read_text() if target.is_file() else ""
            count = text.count(m.original)
            if count != 1:
                why = "snippet not found" if count == 0 else f"snippet found {count} times"
                rows.append((m, "n/a", 0.0, why))
                print(f"{'n/a':9s} {m.id:28s} {why}", flush=True)
                continue
            target.write_text(text.replace(m.original, m.replacement))
            try:
                passed, secs, tail = _run_tests(work, m.tests, args.timeout)
            finally:
                target.write_text(text)
            status = "survived" if passed else "killed"
            rows.append((m, status, secs, tail))
            print(f"{status:9s} {m.id:28s} {secs:6.1f}s  {tail}", flush=True)
    applicable = [r for r in rows if r[1] != "n/a"]
    killed = [r for r in applicable if r[1] == "killed"]
    print("\n| mutant | file | breaks | result | caught by / why |\n|---|---|---|---|---|")
    for m, status, _secs, tail in rows:
        print(f"| {m.id} | {m.path} | {m.note} | {status} | {tail} |")
    rate = 100.0 * len(killed) / max(len(applicable), 1)
    print(
        f"\nkilled {len(killed)} of {len(applicable)} applicable ({rate:.0f}%); "
        f"{len(applicable) - len(killed)} survived; {len(rows) - len(applicable)} not applicable"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
