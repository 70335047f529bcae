"""Dependencies point one way: the building blocks never import the trainer or the CLI, never print."""

import ast
from pathlib import Path

import pytest

import strop

SRC = Path(strop.__file__).parent
BLOCKS = ["losses", "schedules", "finetune", "precision", "data"]


def _modules(block: str) -> list[Path]:
    p = SRC / block
    return sorted(p.rglob("*.py")) if p.is_dir() else [SRC / f"{block}.py"]


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_do_not_import_train_or_cli(block):
    offenders = []
    for path in _modules(block):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("strop.train", "strop.cli", "strop.demo"))]
    assert offenders == []


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_never_print(block):
    calls = [
        f"{path.name}:{node.lineno}"
        for path in _modules(block)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert calls == []


def test_every_block_exists():
    for block in BLOCKS:
        assert _modules(block) and all(p.exists() for p in _modules(block)), block
