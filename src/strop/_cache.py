"""Where strop keeps what a later run can reuse (compiled graphs, the demo's model, which image
files were verified): one folder per kind under the user's cache folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(kind: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$STROP_CACHE/<kind>``, else ``$XDG_CACHE_HOME/strop/<kind>``, else
    ``~/.cache/strop/<kind>`` (not created here)."""
    env = os.environ if environ is None else environ
    if env.get("STROP_CACHE"):
        return Path(env["STROP_CACHE"]).expanduser() / kind
    base = (
        Path(env["XDG_CACHE_HOME"]).expanduser()
        if env.get("XDG_CACHE_HOME")
        else (Path.home() / ".cache")
    )
    return base / "strop" / kind
