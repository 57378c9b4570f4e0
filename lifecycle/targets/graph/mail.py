"""Password delivery: a generated password mailed to the person's manager with Graph ``sendMail``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from lifecycle import deadline
from lifecycle.errors import ConfigurationError, Permanent
from lifecycle.targets.graph.transport import INLINE_RETRY_MAX_SECONDS, Request, client_for

if TYPE_CHECKING:
    from lifecycle.settings import Settings

log = logging.getLogger("lifecycle.graph")


class DirectoryFacts(Protocol):
    """What password delivery needs of the AD target (its ``delivery_facts``)."""

    def delivery_facts(self, dn: str) -> dict[str, str]: ...


class PasswordMailer:
    """Sends a generated password to the person's manager (or a fallback address) with Graph ``sendMail``.

    The password exists only in memory: it is not logged, not stored, not audited, and the mail is not
    saved in the sender's Sent Items. A sendMail that may have been sent twice is not retried blindly.
    """

    def __init__(self, settings: Settings, directory: Callable[[], DirectoryFacts] | None = None) -> None:
        if not settings.password_mail_sender:
            raise Permanent("password delivery by mail needs LIFECYCLE_PASSWORD_MAIL_SENDER (the sending mailbox)")
        self.settings = settings
        self._directory = directory
        # A separate sender identity (least privilege: only it holds Mail.Send); else the service's own app.
        name = settings.password_mail_connection.strip()
        try:
            self._sender_settings = settings.graph_settings(name) if name else settings
        except KeyError:
            raise ConfigurationError(
                f"LIFECYCLE_PASSWORD_MAIL_CONNECTION names {name!r}, which is not a key of "
                "LIFECYCLE_GRAPH_CONNECTIONS (add the sender app's tenant, client id and credential there)"
            ) from None

    def __call__(self, dn: str, password: str) -> None:
        facts = self._directory().delivery_facts(dn) if self._directory is not None else {}
        self.deliver(dn, facts, password, kind="password")

    def deliver(self, who: str, facts: dict[str, str], secret: str, *, kind: str = "password", **extra: str) -> str:
        """Mail ``secret`` (a password, or a Temporary Access Pass: ``kind="tap"``) about ``who``; what happened.

        ``facts``: name, upn, sam, manager_mail, manager_name; ``extra``: more template values (a pass's
        validity). Raises ``Permanent`` when it could not be delivered (the reason names what to do).
        """
        what = "Temporary Access Pass" if kind == "tap" else "password"
        recipient = facts.get("manager_mail") or self.settings.password_mail_fallback
        if not recipient:
            raise Permanent(
                f"the {what} of {who} was set but not delivered: the account has no manager with a mail address "
                f"and LIFECYCLE_PASSWORD_MAIL_FALLBACK is empty; make a new one once one is configured"
            )
        values = {
            "name": facts.get("name", ""),
            "upn": facts.get("upn", ""),
            "sam": facts.get("sam", ""),
            "manager": facts.get("manager_name") or "colleague",
            **extra,
            "password": secret,
            "pass": secret,
        }
        if kind == "tap":
            subject_template, body_template = self.settings.tap_mail_subject, self.settings.tap_mail_body
        else:
            subject_template, body_template = self.settings.password_mail_subject, self.settings.password_mail_body
        subject = fill(subject_template, {**values, "password": "", "pass": ""})
        body = fill(body_template, values)
        client = client_for(self._sender_settings)
        message = {
            "message": {
                "subject": subject,
                "body": {"contentType": "Text", "content": body},
                "toRecipients": [{"emailAddress": {"address": recipient}}],
            },
            "saveToSentItems": False,
        }
        sender = self.settings.password_mail_sender
        path = f"/users/{quote(sender, safe='')}/sendMail"
        request = Request("POST", path, {"content-type": "application/json"}, message)
        # sendMail is not idempotent: only a 429 (refused, so not sent) is retried here; the middleware would
        # also resend after a 503 that may have been sent.
        for _ in range(self.settings.graph_max_retries + 1):
            # Past the tenant's throttling gate: the secret is already set, and a mail not sent now is never sent.
            answer = client.send(request, retry=False, gate=False)
            if answer.status != 429:
                break
            wait = answer.retry_after or 1.0
            if wait > INLINE_RETRY_MAX_SECONDS or wait >= deadline.remaining():
                break
            client.run(asyncio.sleep(wait))
        del values, body, message, request
        if answer.ok:
            log.info("delivered the %s of %s by mail to %s", what, who, recipient)
            return f"the {what} was mailed to {recipient}"
        if answer.status in (500, 502, 503, 504):
            raise Permanent(
                f"the {what} of {who} may or may not have been mailed to {recipient} (Graph answered "
                f"{answer.status}); ask them, and make a new one if it did not arrive"
            )
        raise Permanent(
            f"the {what} of {who} was set but not delivered: sendMail answered {answer.status} {answer.code}; "
            "make a new one once the cause is fixed"
        )


def password_mailer(settings: Settings, directory: Callable[[], DirectoryFacts]) -> Callable[[str, str], None]:
    """The password sink the worker gives the AD target when LIFECYCLE_PASSWORD_DELIVERY is graph_mail."""
    return PasswordMailer(settings, directory)


def fill(template: str, values: dict[str, str]) -> str:
    """``{name}`` placeholders only: a template from settings never reaches attributes or methods."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
