"""The small error tree every layer speaks.

The worker only needs to know one thing about a failure: will trying again help?
``Retryable`` errors are backed off and retried without burning a delivery;
everything else is ``Permanent`` and is dead-lettered with its message as the reason.
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base of every error this package raises on purpose."""


class Retryable(LifecycleError):
    """A transient failure: the target was unreachable, busy, throttled or timed out."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unfinished(Retryable):
    """A long wait cut at the invocation's deadline (``lifecycle.deadline``): come back after ``retry_after``
    and resume from ``progress`` (a script's status URL), which the worker keeps in the step's journal entry."""

    def __init__(self, message: str, *, progress: dict[str, object], retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.progress = progress


class Permanent(LifecycleError):
    """A failure that repeating the same work cannot fix (bad data, a refused change)."""


class OutcomeUnknown(Permanent):
    """A step that runs at most once was interrupted or timed out after it may have taken effect.

    The worker dead-letters the item and keeps the step's journal claim, so no redelivery or replay runs it
    again until an operator has checked and released it (``lifecycle journal release``).
    """


class PolicyRefused(Permanent):
    """A safety rule refused the change (protected account, script not allow-listed)."""


class AdoptionNeeded(PolicyRefused):
    """An existing account was found for a person but not proven ours: an operator must approve the link.

    Raised before anything is created (a joiner whose account exists without the anchor, found by mail, UPN
    or login) and before a password reset of an account the service did not create. The worker records a
    link proposal (``lifecycle link list``); ``lifecycle link approve`` stamps the anchor and runs the work.
    """

    def __init__(self, message: str, *, dn: str, attribute: str, value: str) -> None:
        super().__init__(message)
        self.dn = dn
        self.attribute = attribute
        self.value = value


class NamingExhausted(Permanent):
    """Every naming candidate and numeric suffix is already taken."""


class InvalidEvent(LifecycleError):
    """A request or event that cannot be accepted; ``status`` is the HTTP answer."""

    def __init__(
        self, status: int, title: str, detail: str, *, field: str | None = None, slug: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        # The anchor of the problem type in docs/problems.md (the status when None).
        self.slug = slug


class Unauthorized(InvalidEvent):
    """Missing or wrong webhook credentials."""

    def __init__(self, detail: str) -> None:
        super().__init__(401, "Unauthorized", detail)


class ConfigurationError(LifecycleError):
    """The settings or the mapping file are wrong; the message names the file and field."""
