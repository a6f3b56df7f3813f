"""A W3C ``traceparent`` whose sampled flag is off: the load generator's status polls carry it.

Every ``GET /orders/{id}`` Locust sends while it waits for an order would otherwise be a trace of
its own -- hundreds per order, burying the one trace per order that a reader looks for in Jaeger
(and filling Jaeger's memory). The services' sampler is parent-based
(``shared.observability.default_sampler``): a request whose parent says "not sampled" records
nothing, so the polls cost no spans, while the orders themselves are traced as before (one in
``SYNTHETIC_TRACE_RATIO`` of the load generator's: they carry ``synthetic_request=true``).
"""

from __future__ import annotations

import secrets


def unsampled_traceparent() -> str:
    """``00-<trace id>-<parent id>-00``: version 0, random ids, flags 00 (not sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
