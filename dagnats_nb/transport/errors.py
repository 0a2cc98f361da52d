"""What a NATS error means for a user: nats-py's exceptions read here, not above transport."""

from __future__ import annotations

from nats.js.errors import APIError

__all__ = ["store_error"]

# JetStream error codes of a write refused because a store limit was reached: storage (10047)
# or memory (10028) resources exceeded, insufficient resources (10023), a stream's own limit
# ("maximum bytes exceeded", JSStreamStoreFailedF 10077).
STORE_FULL_CODES = (10047, 10028, 10023, 10077)


STORE_FULL = "JetStream storage is full"


def store_error(exc: BaseException) -> str | None:
    """A clear message when JetStream refused a write because the store is full."""
    if isinstance(exc, APIError) and getattr(exc, "err_code", None) in STORE_FULL_CODES:
        return (
            f"{STORE_FULL} ({exc.description}): raise max_store_bytes, "
            "set runs_max_age, or delete old runs"
        )
    text = str(exc).lower()
    if "insufficient" in text or "resources" in text or "maximum bytes" in text:
        return f"{STORE_FULL} ({exc}): raise max_store_bytes, set runs_max_age, or delete old runs"
    return None
