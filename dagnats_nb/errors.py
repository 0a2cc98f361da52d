"""Errors a user can cause. Each names the thing at fault and what to do."""

from __future__ import annotations


class DagnatsError(Exception):
    """Base class of every error a user of dagnats-nb can cause.

    The message is one line that names the thing at fault (workflow, step, field,
    file, key) and says what to do about it.
    """

    def _render_traceback_(self) -> list[str]:  # IPython shows this line instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class ConfigError(DagnatsError):
    """A configuration key has an invalid value."""


class WorkflowError(DagnatsError):
    """A workflow definition is invalid. ``problems`` holds one line per problem."""

    def __init__(self, message: str = "", problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


class UnsupportedStepType(WorkflowError):
    """A workflow uses a step type this engine does not run yet."""


class ServerError(DagnatsError):
    """The embedded nats-server could not be started or reached."""


class EngineLocked(ServerError):
    """Another engine already holds the data directory."""


class RunError(DagnatsError):
    """A run could not be started, or failed while a caller waited on it."""


class BackupError(DagnatsError):
    """A stream backup or restore failed, or a backup folder is not usable."""


class UnservedTaskWarning(UserWarning):
    """A workflow's steps name task types that no live worker serves: their runs wait until
    a handler (``@dn.task``, ``@eng.task``) or a worker process (``dagnats worker``) serves
    them. Filter it with ``warnings.filterwarnings("ignore", category=...)``."""
