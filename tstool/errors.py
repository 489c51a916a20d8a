"""Typed errors raised by the library; the CLI maps them to messages and exit codes."""

from __future__ import annotations


class TstoolError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""

    exit_code = 2


class InputError(TstoolError):
    """Bad or unreadable input data, files or datasets."""


class ConfigError(TstoolError):
    """An invalid configuration value, key or preset."""


class TokenizerError(TstoolError):
    """A tokenizer that cannot be loaded or cannot be used as asked."""


class CheckpointError(TstoolError):
    """A checkpoint that is missing, damaged, untrusted or incompatible."""


class RunLocked(TstoolError):
    """A run folder that another process is training into: one writer per run folder."""


class DeviceError(TstoolError):
    """A requested device or dtype that this machine cannot provide."""


class CheckFailed(TstoolError):
    """A diagnosis ran and found a problem (for example wrong article IDs): exit 1."""

    exit_code = 1


class TrainingHalted(TstoolError):
    """Training stopped itself because it could not go on (for example repeated non-finite losses)."""

    exit_code = 1


class Interrupted(TstoolError):
    """Training was stopped by SIGINT/SIGTERM after saving a resumable checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
