"""What the CLI prints: warnings as one clean line each; library users keep the warning class."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

import strop
from strop.cli import main, warnings_as_lines
from strop.data import BadFilesWarning, image_folder, write_digits


@pytest.fixture
def digits_with_bad_file(tmp_path):
    root = write_digits(tmp_path / "digits", digits=[0, 1], per_class=6, seed=0, size=16)
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_library_users_still_get_the_warning_class(digits_with_bad_file):
    with pytest.warns(BadFilesWarning, match=r"image_folder: skipped 1 unreadable") as caught:
        image_folder(digits_with_bad_file, image_size=16)
    assert "1/broken.png" in caught[0].message.files.__repr__()


@pytest.mark.slow
def test_strop_train_prints_skipped_files_as_one_line(digits_with_bad_file, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": str(digits_with_bad_file),
                    "image_size": 16,
                    "batch_size": 6,
                    "num_workers": 0,
                },
                "precision": "fp32",
                "epochs": 1,
                "progress": False,
                "output": str(tmp_path / "run"),
            }
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest: warnings are shown, not raised
        assert main(["train", str(cfg)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "broken.png" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("strop train: warning: image_folder: skipped 1 unreadable")
    assert "BadFilesWarning" not in err and ".py:" not in err  # no file:line prefix
    assert "image_folder(" not in err  # no echoed source line


def test_other_warnings_keep_their_category_without_source(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with warnings_as_lines("strop x"):
            warnings.warn_explicit("old API", FutureWarning, "/elsewhere/lib.py", 7)
            warnings.warn_explicit(
                "clipped", UserWarning, str(Path(strop.__file__).parent / "s.py"), 3
            )
    err = capsys.readouterr().err
    assert "strop x: warning: FutureWarning: old API\n" in err
    assert "strop x: warning: clipped\n" in err  # strop's own: the message alone
    assert err.count("lib.py") == 0
    # restored afterwards: Python's own format again
    assert warnings.showwarning is not None and warnings.showwarning.__name__ != "show"
