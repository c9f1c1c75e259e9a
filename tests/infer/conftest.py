"""Fixtures for tests/infer (defined in infer_testdata.py)."""

from infer_testdata import corpus, weights_file  # noqa: F401  (pytest finds fixtures by name)
