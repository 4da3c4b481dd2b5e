"""User-facing errors.

Anything a user can cause (bad config, bad data, missing paths, corrupt checkpoints) raises
:class:`MixtuneError`; the CLI turns it into one clear message and a non-zero exit, never a
traceback. Internal bugs stay ordinary exceptions so they are not disguised as user mistakes.
"""

from __future__ import annotations


class MixtuneError(Exception):
    """An error caused by user input; ``where`` names the file, key path or record."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(MixtuneError):
    """Invalid configuration: unknown key, wrong type, bad override."""


class DataError(MixtuneError):
    """Invalid or unreadable input data."""


class CheckpointError(MixtuneError):
    """A checkpoint is missing, truncated or corrupt."""


class RunDirError(MixtuneError):
    """The output directory holds a different run, or is unusable."""
