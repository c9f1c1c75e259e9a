"""Fetching a dataset's files with torchvision's downloaders, failing with one line a user can act on.

What those downloaders raise when the fetch, not our code, fails: urllib's URLError and HTTPError
and every socket, SSL or disk error (OSError, which includes gzip.BadGzipFile); http.client's
HTTPException when a connection is cut mid-response (IncompleteRead); RuntimeError for a failed
checksum or when every mirror failed; tarfile.TarError and EOFError for a truncated archive.
Anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import http.client
import tarfile
from collections.abc import Callable
from pathlib import Path

from reslab.errors import DataError

DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, RuntimeError, tarfile.TarError, EOFError)


def fetch(download: Callable[[], object], name: str, data_dir: Path, by_hand: str) -> None:
    """Run `download` (a torchvision dataset built with download=True) into `data_dir`; a failure
    becomes a DataError naming the dataset and the folder, then `by_hand`: how to get the files."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download()
    except DOWNLOAD_ERRORS as err:  # no network, a proxy, a failed checksum: all fixable by hand
        raise DataError(f"could not download {name} into {data_dir} ({type(err).__name__}: {err}). {by_hand}") from err
