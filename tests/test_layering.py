"""Dependencies point one way: the building blocks never import the trainer or the CLI, never print."""

import ast
import re
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
            offenders += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith(("strop.train", "strop.cli", "strop.demo"))
            ]
    assert offenders == []


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_never_print(block):
    calls = [
        f"{path.name}:{node.lineno}"
        for path in _modules(block)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
    ]
    assert calls == []


def test_every_block_exists():
    for block in BLOCKS:
        assert _modules(block) and all(p.exists() for p in _modules(block)), block


def _private_imports() -> set[tuple[str, str, str]]:
    """``(file, module, name)`` for every ``from strop.X import _name`` where no part of X is private."""
    found = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("strop")
            ):
                continue
            if any(part.startswith("_") for part in node.module.split(".")):
                continue  # a private module (strop._checks, losses._prepare) may hand out _names
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((path.relative_to(SRC).as_posix(), node.module, alias.name))
    return found


def test_public_modules_do_not_hand_out_private_names():
    assert _private_imports() == set()


MAX_TRAIN_FUNCTION_LINES = 80


def test_no_function_in_train_is_longer_than_80_lines():
    long = [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted((SRC / "train").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_TRAIN_FUNCTION_LINES
    ]
    assert long == []


def test_fit_reads_on_one_screen():
    from strop.train import trainer

    tree = ast.parse(Path(trainer.__file__).read_text())
    fit = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 60


def _doc_modules() -> set[str]:
    """The modules docs/architecture.md describes: each as a bullet ``- `path/to/file.py`: job``."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    return set(re.findall(r"^- `([\w/]+\.py)`:", doc, flags=re.MULTILINE))


def test_architecture_doc_names_every_module():
    files = {p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
    assert sorted(files - _doc_modules()) == [], "modules docs/architecture.md does not describe"
    assert sorted(_doc_modules() - files) == [], (
        "docs/architecture.md describes modules that do not exist"
    )
