"""Typed errors: each message says what went wrong and what to change."""


class CxrsegError(Exception):
    """Base class for errors the CLI turns into one clear line."""


class ConfigError(CxrsegError):
    """A setting, flag value or config file is invalid (exit code 2, like other usage errors)."""

    exit_code = 2


class DataError(CxrsegError):
    """A dataset folder, image or mask cannot be used."""


class InputPathError(DataError):
    """An input or output path given on the command line cannot be used (exit code 2, a usage error)."""

    exit_code = 2


class CheckpointError(CxrsegError):
    """A checkpoint is missing, corrupt or incompatible."""


class DownloadError(CxrsegError):
    """A dataset could not be fetched or extracted."""


class WorkerError(CxrsegError):
    """A worker process ended abruptly (the out-of-memory killer, a SIGKILL): its images have no result."""


class OutputError(CxrsegError):
    """An output cannot be written: disk full, read-only folder, or a path that is not a folder."""


class TrainingError(CxrsegError):
    """Training cannot go on (for example, the loss became NaN)."""


class Interrupted(CxrsegError):
    """A command stopped by Ctrl-C (exit code 130) or SIGTERM (143); the message says what was kept."""

    def __init__(self, message: str = "", exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingInterrupted(CxrsegError):
    """Training stopped on Ctrl-C or SIGTERM after saving a resumable state."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
