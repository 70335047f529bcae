import subprocess
import sys

import pytest

from strop import __version__
from strop.cli import COMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"strop {__version__}"


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: strop " + command in capsys.readouterr().out


def test_console_script_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "strop", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"strop {__version__}"


def test_library_errors_become_one_line_messages(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\noptimzer: {lr: 0.1}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "strop train: error: invalid config" in err and "did you mean 'optimizer'?" in err
