"""Unpickling that can rebuild numpy arrays and nothing else.

The CIFAR "python version" files are pickles, and a pickle can call any importable function
while it loads (`os.system`, `eval`, ...). A downloaded file is untrusted input, so we load it
with an `Unpickler` whose `find_class` knows exactly the few globals a pickled dict of numpy
arrays, bytes and lists needs, and refuses every other global before anything is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reslab.errors import DataError

# `np.ndarray.__reduce__` names the function that rebuilds arrays; taking it from there avoids
# importing `numpy.core` (deprecated in numpy 2) or `numpy._core` (absent before 1.26).
_RECONSTRUCT: Callable[..., np.ndarray] = np.empty(0).__reduce__()[0]  # type: ignore[assignment]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3 uses it to pickle `bytes` at protocol 2, and only that use."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# (module, name) -> object. Python 2 pickles say `numpy.core.multiarray`, numpy 2 writes
# `numpy._core.multiarray`; both mean the same function.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "ndarray"): np.ndarray,
    ("numpy._core.multiarray", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "dtype"): np.dtype,
    ("numpy._core.multiarray", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An `Unpickler` that resolves only the globals in `_ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        # encoding="bytes", as the official CIFAR loader: Python 2 `str` (keys, array buffers)
        # stay bytes instead of being decoded as ASCII, which would fail on the pixel data.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to load {module}.{name} from this pickle; a dataset "
                "file should hold only numpy arrays, bytes and lists. The file is not a genuine "
                "CIFAR batch (possibly malicious); delete it and download it again."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: unexpected persistent id in pickle; delete the file")


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle `path` with `NumpyOnlyUnpickler`; a corrupt file becomes a `DataError` naming it."""
    try:
        with open(path, "rb") as file:
            return NumpyOnlyUnpickler(file, path).load()
    except DataError:
        raise
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    except Exception as err:  # noqa: BLE001 (a garbled pickle raises whatever its last opcode raises)
        # UnpicklingError, EOFError, ValueError, KeyError, IndexError, struct.error, numpy's errors ...:
        # each is this file's damage, not a bug of ours, so each becomes the one line below.
        raise DataError(
            f"{path}: not a readable pickle ({type(err).__name__}: {err}); the file is corrupt "
            "or truncated, delete it and download it again"
        ) from err
