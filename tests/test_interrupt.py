"""A command that runs several fits stops as a whole when one fit is interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from strop._interrupt import FitInterrupted, check_fit, exit_code, run_script


def test_exit_codes_are_the_shells():
    # POSIX: SIGINT is 2 and SIGTERM 15; a shell reports a signal's death as 128 + n
    assert exit_code("SIGINT") == 130
    assert exit_code("SIGTERM") == 143
    assert exit_code("SIGTERM (on another rank)") == 143  # the trainer's name on DDP ranks


def test_check_fit_passes_a_finished_run_and_stops_an_interrupted_one():
    done = SimpleNamespace(interrupted=None, best_metric=0.9)
    assert check_fit(done, what="x") is done
    with pytest.raises(FitInterrupted) as info:
        check_fit(
            SimpleNamespace(interrupted="SIGTERM"), what="the source task", resume="strop demo"
        )
    assert info.value.exit_code == 143
    assert str(info.value) == (
        "interrupted by SIGTERM during the source task; stopped, no result reported. "
        "To continue: strop demo"
    )


def test_run_script_prints_one_line_and_returns_the_status(capsys):
    def main():
        print("first result")
        check_fit(SimpleNamespace(interrupted="SIGINT"), what="fit 2")
        print("never printed")

    assert run_script(main, name="bench.py") == 130
    out, err = capsys.readouterr()
    assert out == "first result\n"
    assert err == "bench.py: interrupted by SIGINT during fit 2; stopped, no result reported\n"
    assert run_script(lambda: None, name="bench.py") == 0


def test_strop_main_ends_a_multi_fit_command_with_143(monkeypatch, capsys):
    import strop.cli.demo as demo_cli
    from strop.cli import main

    def run(args):
        raise FitInterrupted("SIGTERM", what="the source task", resume="strop demo --out d")

    monkeypatch.setattr(demo_cli, "run", run)
    assert main(["demo"]) == 143
    assert capsys.readouterr().err == (
        "strop demo: interrupted by SIGTERM during the source task; stopped, no result "
        "reported. To continue: strop demo --out d\n"
    )


@pytest.mark.parametrize(("name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_strop_train_exits_with_the_signals_status(tmp_path, monkeypatch, capsys, name, status):
    import strop.train as train_mod
    from strop.cli import main
    from strop.train.trainer import RunResult

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 1\n")
    cut = RunResult(run_dir=tmp_path, best_metric=0.5, best_epoch=1, interrupted=name)
    monkeypatch.setattr(train_mod, "fit", lambda config, resume=False, exist_ok=False: cut)
    assert main(["train", str(cfg)]) == status
    assert "best" not in capsys.readouterr().out  # the cut run's metric is not a result


@pytest.mark.slow
def test_benchmark_script_stops_on_a_real_sigterm(tmp_path):
    """SIGTERM during the first of the feature-cache benchmark's two fits: the script exits 143
    without printing a table, and the second fit never starts."""
    bench = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {bench!r})
        import torch
        torch.set_num_threads(1)
        import common
        from strop.data import write_digits
        from strop._interrupt import run_script

        root = write_digits({str(tmp_path / "d")!r}, digits=[0, 1], per_class=8, size=16)
        real = common.run_fit
        calls = []

        class Kill:
            def on_batch_end(self, state, logs):
                os.kill(os.getpid(), signal.SIGTERM)

        def run_fit(config, **kw):
            calls.append(config["feature_cache"])
            print("fit", calls, file=sys.stderr, flush=True)
            return real(config, callbacks=[Kill()], **kw)

        import feature_cache
        feature_cache.run_fit = run_fit
        sys.exit(run_script(lambda: print(feature_cache.run(size=16, epochs=2, folder=root)[0]),
                            name="feature_cache.py"))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stdout == ""  # no table, not even a partial one
    assert "fit ['auto']" in proc.stderr and "'off'" not in proc.stderr  # the 2nd fit never ran
    assert "feature_cache.py: interrupted by SIGTERM during the benchmark fit" in proc.stderr
