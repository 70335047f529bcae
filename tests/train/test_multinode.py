"""Several machines, tested on one: two torchrun launches of one process each (``--nnodes 2``,
c10d rendezvous on loopback) train exactly as one launch of two processes.

Only 127.0.0.1 is used. The model and data are those of test_distributed.py (squeezenet1_1
without dropout, no BatchNorm), so the same world size gives the same operations in the same
order and the weights are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_distributed import BASE  # the same model, data and optimizer

TIMEOUT_S = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    deadline = time.monotonic() + TIMEOUT_S
    out = []
    for proc in procs:
        try:
            text, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail("a torchrun launch did not finish in time (hang)")
        out.append((proc.returncode, text))
    return out


def _config(tmp: Path, root: Path, name: str) -> Path:
    cfg = json.loads(json.dumps(BASE))
    cfg["data"]["root"] = str(root)
    cfg["output"] = str(tmp / name)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def four_digits(tmp_path_factory):
    from strop.data import write_digits

    return write_digits(
        tmp_path_factory.mktemp("digits4"), digits=[0, 1, 2, 3], per_class=10, seed=0, size=16
    )


@pytest.mark.slow
def test_two_one_process_nodes_equal_one_two_process_launch(tmp_path, four_digits):
    from strop.train import load_checkpoint

    single = _config(tmp_path, four_digits, "single")
    multi = _config(tmp_path, four_digits, "multi")
    port = _free_port()
    node = [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"strop-test-{port}",
    ]
    nodes = [_start([*node, "-m", "strop", "train", str(multi)]) for _ in range(2)]
    one = _start(["--standalone", "--nproc_per_node", "2", "-m", "strop", "train", str(single)])
    results = _finish([*nodes, one])
    for rc, text in results:
        assert rc == 0, text[-3000:]
    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "multi" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # two nodes of one process each: global rank 1 ran in the second launch
    assert sum("run folder:" in text for _, text in results[:2]) == 1
