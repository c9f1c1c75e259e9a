"""User-facing errors.

A `ReslabError` is a mistake the user can fix (bad name, bad file, bad setting). The CLI prints
its message on one line and exits with status 2, without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class ReslabError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""


class UnknownModelError(ReslabError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class InputShapeError(ReslabError, ValueError):
    """A tensor whose shape the network cannot take."""


class ConfigError(ReslabError, ValueError):
    """An unknown or badly typed setting."""


class DataError(ReslabError):
    """A missing, corrupt or unreadable dataset file."""


class CheckpointError(ReslabError):
    """A missing, damaged or unsafe checkpoint / weights file."""
