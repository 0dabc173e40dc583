"""Errors the edges turn into clear messages; none of them ever carries a password."""


class ResetbotError(Exception):
    """Base class for errors meant to be shown to a person as they are."""


class ConfigError(ResetbotError):
    """A setting is missing or invalid; the message names the variable."""


class InputError(ResetbotError):
    """Input from a person was refused; `field` says where it was typed."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConflictError(ResetbotError):
    """The request is valid but clashes with the current state (e.g. already consumed)."""


class QueueUnavailable(ResetbotError):
    """The job queue (Redis) cannot take work now; what was committed stays in the database."""
