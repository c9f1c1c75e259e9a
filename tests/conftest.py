"""Shared test set-up: the dataset-file builders in tests/data are importable everywhere."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "data"))
