"""The ``strop`` command: translates arguments into calls of the library, nothing more.

Each subcommand lives in ``strop/cli/<name>.py`` and defines ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so that ``strop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from strop import __version__

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "strop.cli.demo",
        "the main job: transfer learning on bundled digits (or shapes), compared",
    ),
    "train": ("strop.cli.train", "fine-tune a model from a YAML config"),
    "eval": ("strop.cli.evaluate", "metrics of a run's best checkpoint on its validation split"),
    "predict": (
        "strop.cli.predict",
        "class and probability per image (CSV); boxes for detection runs",
    ),
    "export": ("strop.cli.export", "export a run's weights (safetensors recommended)"),
    "lr-find": ("strop.cli.lr_find", "LR range test on a training config; writes the plot"),
    "lr-plot": ("strop.cli.lr_plot", "draw learning-rate schedules to PNG (and CSV)"),
    "inspect": ("strop.cli.inspect", "show a model's head, layer groups and what is trainable"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported to add its arguments.

    ``strop --help`` lists every command without importing any of them (nor torch).
    """
    parser = argparse.ArgumentParser(
        prog="strop",
        description="Fine-tune PyTorch models: losses, LR schedules, transfer learning, mixed precision.",
    )
    parser.add_argument("--version", action="version", version=f"strop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``strop`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    from strop._interrupt import FitInterrupted

    try:
        with warnings_as_lines(f"strop {args.command}"):
            return int(module.run(args) or 0)
    except FitInterrupted as exc:
        # one of several fits was stopped by a signal: the whole command stops, nothing partial
        print(f"strop {args.command}: {exc.message()}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, TypeError, OSError) as exc:
        # library errors already name the function, argument, expectation and value; OSError
        # covers a missing file and an output folder that cannot be created
        if os.environ.get("STROP_DEBUG"):
            raise
        print(f"strop {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # strop's own failures (CheckpointError: refused or unwritable checkpoint;
        # NonFiniteLossError: the diagnostic of nonfinite="stop") are messages, not crashes
        if os.environ.get("STROP_DEBUG") or not type(exc).__module__.startswith("strop."):
            raise
        print(f"strop {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C before training installed its handler (imports, data, model): nothing to save
        print(f"strop {args.command}: interrupted", file=sys.stderr)
        return 130


_STROP_DIR = str(Path(__file__).resolve().parents[1])


@contextmanager
def warnings_as_lines(prefix: str, stream: TextIO | None = None) -> Iterator[None]:
    """Show warnings as one line each, ``"{prefix}: warning: {message}"``, while the block runs.

    Python's format (``file.py:123: BadFilesWarning: ...`` and the echoed source line) is for
    developers; a CLI user gets the message. Warnings from outside strop keep their category
    (``... warning: UserWarning: ...``). Only the display changes: filters, the warning classes
    and ``warnings.catch_warnings(record=True)`` in library code behave as before.
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        ours = category.__module__.startswith("strop") or str(Path(filename).resolve()).startswith(
            _STROP_DIR
        )
        text = str(message).strip()
        if not ours:
            text = f"{category.__name__}: {text}"
        print(f"{prefix}: warning: {text}", file=stream or file or sys.stderr)

    old: Any = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old
