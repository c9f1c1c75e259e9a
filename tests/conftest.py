"""Shared test set-up: the file builders of tests/data and tests/infer are importable everywhere,
and the image-corpus and weights fixtures of infer_testdata.py are available to every test."""

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "data"))
sys.path.insert(0, str(HERE / "infer"))

from infer_testdata import corpus, weights_file  # noqa: E402, F401  (pytest finds fixtures by name)
