"""Weights on the Hugging Face Hub: `hf-hub:USER/NAME[@REVISION]` -> a local weights file.

A reslab model repository (written by `reslab push`, see reslab.infer.publish) holds
`weights.safetensors`, `config.json` and a model card `README.md`. Only the safetensors file is
fetched: it carries the architecture, classes and preprocessing itself, and the caller
(`reslab.weights.resolve_weights` -> `load_weights`) checks it as it checks any local file. No
pickle, `.bin` or code is ever downloaded.

Files go through huggingface_hub's own cache (`$HF_HOME/hub`, or `$HF_HUB_CACHE`:
models--USER--NAME/{blobs,snapshots/COMMIT,refs/BRANCH}), so what `hf download` or another
library fetched is reused, and with HF_HUB_OFFLINE=1 a cached repository loads without any
network access; one that is not cached is a one-line error saying so.

huggingface_hub is an optional dependency (`pip install 'reslab[hub]'`), imported only here,
inside the functions.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

from reslab.errors import CheckpointError, ConfigError
from reslab.rundir import WEIGHTS_FILE

HF_HUB = "hf-hub:"  # prefix of a Hub repository wherever weights are accepted
HUB_WEIGHTS_FILE = WEIGHTS_FILE  # the one file of a repository that reslab loads, named as in a run
INSTALL_HINT = "pip install 'reslab[hub]' (huggingface_hub)"


def is_hub_spec(source: object) -> bool:
    return isinstance(source, str) and source.startswith(HF_HUB)


def check_repo_id(repo: str, what: str) -> str:
    """`repo` when it is a valid USER/NAME model id; a ConfigError naming `what` otherwise."""
    _require_hub()
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"{what}: {reprlib.repr(repo)} is not a repository id of the form USER/NAME")
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise ConfigError(f"{what}: {reprlib.repr(repo)} is not a valid repository id ({exc})") from None
    return repo


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """`hf-hub:USER/NAME@REVISION` -> ("USER/NAME", "REVISION"); no "@": revision None (main).
    A revision may hold "/" (refs/pr/1), so the first "@" splits."""
    rest = spec[len(HF_HUB) :]
    repo, at, revision = rest.partition("@")
    if at and not revision.strip():
        raise ConfigError(f"{reprlib.repr(spec)}: nothing after '@'; write {HF_HUB}USER/NAME@REVISION")
    return check_repo_id(repo, spec.split("@")[0]), (revision if at else None)


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise ConfigError(f"{HF_HUB} weights need the Hugging Face Hub client: {INSTALL_HINT}") from None


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE=1, read when it was imported)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch_hub_weights(spec: str) -> Path:
    """The cached weights file of `hf-hub:USER/NAME[@REVISION]`, downloaded first when needed
    (never when offline). Every failure is a one-line CheckpointError naming the repository."""
    repo, revision = parse_hub_spec(spec)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, HUB_WEIGHTS_FILE, revision=revision))
    except LocalEntryNotFoundError as exc:  # not cached, and no download (offline, or no network)
        if offline():
            fetch = f"hf download {repo} {HUB_WEIGHTS_FILE}" + (f" --revision {revision}" if revision else "")
            raise CheckpointError(
                f"{spec} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids "
                f"downloading it: fetch it once online (`{fetch}`) or unset HF_HUB_OFFLINE"
            ) from None
        cause = exc.__cause__ or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise CheckpointError(
            f"cannot download {spec} and it is not in the Hugging Face cache ({cache_dir()}): {first}"
        ) from None
    except RepositoryNotFoundError:  # also a gated or private repository without a token
        raise CheckpointError(
            f"{spec}: no such model repository on the Hugging Face Hub, or it is private or gated "
            "(log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{spec}: the repository {repo} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise CheckpointError(
            f"{spec}: the repository holds no {HUB_WEIGHTS_FILE}; reslab loads only the safetensors "
            "weights that `reslab push` uploads"
        ) from None
    except (HfHubHTTPError, HFValidationError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot fetch {spec}: {first}") from None
