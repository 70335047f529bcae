"""The schedule tests share helpers from ``_schedule_helpers.py`` next to this file."""

import sys
from pathlib import Path

# tests/ has no packages (pytest runs with --import-mode=importlib)
sys.path.insert(0, str(Path(__file__).parent))
