"""The errors of MAAS calls, each saying what went wrong and how to fix it.

A rejected key or a non-admin user is bad input (``UsageError``, exit status 2); an unreachable
MAAS or an error answer fails the step (``StepFailed``). Messages never contain the API key.
"""

from __future__ import annotations

from openeuler_image_builder.core.errors import StepFailed, UsageError

_FIX_KEY = (
    "get a valid key with `maas apikey --username ADMIN` on a region controller "
    "(or the maas-region charm's get-api-key action) and pass it again"
)
_FIX_ADMIN = (
    "use the key of a MAAS administrator (`maas createadmin`, or the maas-region charm's "
    "create-admin action, then `maas apikey --username ADMIN`)"
)


class MaasKeyRejected(UsageError):
    """MAAS answered 401: the API key is unknown, revoked or malformed."""

    def __init__(self, url: str) -> None:
        super().__init__(f"MAAS rejected the API key (HTTP 401 from {url}): {_FIX_KEY}")


class MaasNotAdmin(UsageError):
    """The key is valid but its user may not upload or delete boot resources."""

    def __init__(self, user: str | None = None) -> None:
        who = f" ({user})" if user else ""
        super().__init__(f"the API key's user{who} is not a MAAS admin: {_FIX_ADMIN}")


class MaasUnreachable(StepFailed):
    """No HTTP answer from MAAS (refused, timed out, TLS failure, name not found)."""

    def __init__(self, step: str, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(step, f"MAAS is unreachable at {url}: {why}")


class MaasApiError(StepFailed):
    """MAAS answered with an error; ``maas_text`` is MAAS's own error text."""

    def __init__(self, step: str, what: str, status: int, maas_text: str) -> None:
        self.status = status
        self.maas_text = maas_text
        super().__init__(step, f"{what}: MAAS answered HTTP {status}: {maas_text}")
