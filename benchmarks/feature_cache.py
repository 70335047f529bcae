"""Feature caching for a frozen backbone: ``fit`` with ``feature_cache: auto`` (cached) vs ``off``.

Run ``python benchmarks/feature_cache.py [--quick]``. Both runs fine-tune resnet18's head
(``freeze: backbone``, random init, SGD) for the same epochs on the same folder — the bundled
digits plus jittered copies of some (2,250 PNGs at 16×16 — the scans are 8×8 — 90% train, 10%
validation, so 2,025 training images) — read through
strop's ``data.cache: memory`` in both runs, so the difference is the feature cache alone. Reported:
the whole ``fit`` wall time (start-up, feature extraction, training, validation, checkpoints,
plots), the sum of the per-epoch seconds, the final validation accuracy of each run and the largest
difference between the two runs' final head weights. The speed-up is the median of the per-round
ratios (each round's uncached fit over its cached one, run back to back).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from common import digits_folder, markdown_table, median, run_fit

__all__ = ["main", "per_round_ratios", "run"]


def run(
    *,
    size: int = 16,
    total: int | None = 2250,
    epochs: int = 10,
    rounds: int = 3,
    data_root: Path | None = None,
    folder: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[str, dict[str, Any]]:
    """Two fits, cached and uncached; returns ``(markdown, figures)``.

    ``folder``: an image folder to use instead of the digits written under ``data_root``.
    """
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = folder or digits_folder(data_root or tmp / "data", size=size, total=total)
        heads = {}
        # a warm-up fit first (1 epoch, cached): the one-time costs of a process (torch's first
        # kernels, matplotlib's and scikit-learn's imports, the font cache) are then in neither
        # timed run, whichever runs first
        progress("  feature cache: warm-up fit")
        run_fit(
            {
                "data": {
                    "root": str(root),
                    "image_size": size,
                    "batch_size": 32,
                    "val_fraction": 0.1,
                    "num_workers": 0,
                },
                "model": {"name": "resnet18", "freeze": "backbone"},
                "epochs": 1,
                "feature_cache": "auto",
                "output": str(tmp / "warmup"),
                "seed": 0,
            }
        )
        # rounds interleaved, the order alternating (auto off, off auto, ...): a load that
        # changes during the script weighs on both modes alike; medians are reported
        order = [
            m for r in range(rounds) for m in (("auto", "off") if r % 2 == 0 else ("off", "auto"))
        ]
        runs: dict[str, list[dict[str, Any]]] = {"auto": [], "off": []}
        for n, mode in enumerate(order):
            progress(f"  feature cache {mode}: {epochs} epochs (run {n + 1}/{len(order)})")
            folder_name = f"run_{mode}_{n}"
            result, _, stamps = run_fit(
                {
                    "data": {
                        "root": str(root),
                        "image_size": size,
                        "batch_size": 32,
                        "val_fraction": 0.1,
                        "cache": "memory",
                        "num_workers": 0,
                    },
                    "model": {"name": "resnet18", "freeze": "backbone"},
                    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                    "epochs": epochs,
                    "feature_cache": mode,
                    "output": str(tmp / folder_name),
                    "seed": 0,
                }
            )
            ck = torch.load(
                tmp / folder_name / "checkpoints" / "last.pt",
                map_location="cpu",
                weights_only=False,
            )
            heads[mode] = torch.cat([ck["model"]["fc.weight"].flatten(), ck["model"]["fc.bias"]])
            runs[mode].append(
                {
                    "seconds": result.seconds,
                    "epoch_seconds": sum(h["epoch_seconds"] for h in result.history),
                    "val_accuracy": result.final.get("val_accuracy", float("nan")),
                    "cached": bool(result.choices.get("feature_cache")),
                    "reason": result.choices.get("feature_cache_reason", ""),
                    "log": [m for _, m in stamps if m.startswith("feature cache")],
                }
            )
        # each round's two runs ran back to back: their ratio compares the same spell of the
        # host (whose speed changes for seconds at a time), which the ratio of medians does not
        per_round = per_round_ratios(
            [r["seconds"] for r in runs["off"]], [r["seconds"] for r in runs["auto"]]
        )
        for mode, rs in runs.items():
            out[mode] = {
                **rs[-1],
                "seconds": median([r["seconds"] for r in rs]),
                "epoch_seconds": median([r["epoch_seconds"] for r in rs]),
                "seconds_each": [r["seconds"] for r in rs],
            }
        n_images = sum(1 for p in root.rglob("*.png"))
    out["epochs"] = epochs
    out["head_max_abs_diff"] = float((heads["auto"] - heads["off"]).abs().max())
    out["head_max_abs"] = float(heads["off"].abs().max())
    out["speedup_of_medians"] = out["off"]["seconds"] / out["auto"]["seconds"]
    out["speedup_per_round"] = per_round
    out["speedup"] = median(per_round)
    out["speedup_epochs"] = out["off"]["epoch_seconds"] / out["auto"]["epoch_seconds"]
    rows = []
    for mode, label in (
        ("off", "feature_cache: off (backbone every epoch)"),
        ("auto", "feature_cache: auto (cached)"),
    ):
        r = out[mode]
        rows.append(
            [
                label,
                "yes" if r["cached"] else "no",
                f"{r['seconds']:.1f}",
                f"{r['epoch_seconds']:.1f}",
                f"{r['val_accuracy']:.4f}",
            ]
        )
    md = markdown_table(
        ["run", "cache used", "fit wall s", "Σ epoch s", "final val accuracy"], rows
    )
    md += (
        f"\n\n- {n_images} images at {size}×{size}, {epochs} epochs, batch 32; medians of {rounds} "
        f"interleaved runs each (fit wall s: off {_each(out['off'])}, cached {_each(out['auto'])}), "
        "after a warm-up fit; speed-up on the whole fit "
        f"{out['speedup']:.1f}× (median of the per-round ratios "
        f"{' / '.join(f'{x:.1f}' for x in per_round)}; ratio of the medians "
        f"{out['speedup_of_medians']:.1f}×), {out['speedup_epochs']:.1f}× on the epochs "
        f"(the cached run's first epoch includes no extraction: it happens before epoch 1 and is "
        f"in the fit time only); {_heads(out)}"
    )
    if out["auto"]["log"]:
        md += f"\n- log: `{out['auto']['log'][0]}`"
    return md, out


def per_round_ratios(uncached: Sequence[float], cached: Sequence[float]) -> list[float]:
    """Each round's uncached seconds over its cached seconds (the rounds' runs side by side)."""
    if len(uncached) != len(cached) or not cached:
        raise ValueError(
            f"per_round_ratios: one cached and one uncached time per round; got "
            f"{len(uncached)} uncached and {len(cached)} cached"
        )
    return [u / c for u, c in zip(uncached, cached, strict=True)]


def _heads(out: dict[str, Any]) -> str:
    if out["head_max_abs_diff"] == 0:
        return "final head weights identical"
    return (
        f"final head weights differ by at most {out['head_max_abs_diff']:.2e} (float32 rounding: "
        f"the backbone's convolutions ran in other batches; entries up to {out['head_max_abs']:.2f})"
    )


def _each(r: dict[str, Any]) -> str:
    return " / ".join(f"{x:.1f}" for x in r["seconds_each"])


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,797 images, 3 epochs")
    args = parser.parse_args(argv)
    kw = {"total": None, "epochs": 3, "rounds": 1} if args.quick else {}
    md, _ = run(progress=lambda m: print(m, file=sys.stderr), **kw)
    return md


if __name__ == "__main__":
    from strop._interrupt import run_script

    # a signal during one of the fits stops the whole script (exit 130/143), nothing reported
    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/feature_cache.py"))
