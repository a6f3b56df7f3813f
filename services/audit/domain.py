"""What the audit writes down. Pure: no I/O -- the handlers and the broker-event consumer
read and write, these decide.

A **trail entry** is one arrival of one event at the audit: who published it (as the consumer
verified it), the verdict, how it came (the routing key), and the envelope's own facts -- id,
type, version, order, cause, time. Never its ``data``: the audit must not become one more
place that holds a sealed token, a customer id or an amount. One entry per (event id,
publisher): a redelivery finds its entry, and a forger who copies a genuine event's id gets
an entry of its own instead of hiding the genuine one (or being hidden by it).

A **broker event** is one of RabbitMQ's own security events (a failed login, a permission
granted), read from the headers its event exchange sends.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shared.contracts import Envelope
from shared.messaging import UNVERIFIED, Provenance


def trail_entry(
    envelope: Envelope, provenance: Provenance | None, received_at: datetime
) -> dict[str, Any]:
    """The record of one event's arrival; ``provenance`` None: nobody verified who sent it."""
    publisher = provenance.publisher if provenance else ""
    return {
        "_id": f"{envelope.id}/{publisher}",
        "event_id": envelope.id,
        "type": envelope.type,
        "version": envelope.version,
        # What the envelope claims about itself; `publisher` is who sent it (RabbitMQ-checked).
        "source": envelope.source,
        "publisher": publisher,
        "verdict": provenance.verdict if provenance else UNVERIFIED,
        "routing_key": provenance.routing_key if provenance else "",
        "order_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        "sequence": envelope.sequence,
        "occurred_at": envelope.occurred_at,
        "received_at": received_at,
    }


# --8<-- [start:broker-event]
def broker_event(
    routing_key: str, headers: Mapping[str, Any], received_at: datetime
) -> dict[str, Any]:
    """The record of one of the broker's own events (its event exchange's headers)."""
    at_ms = headers.get("timestamp_in_ms")
    return {
        "_id": _broker_event_key(routing_key, headers),
        "event": routing_key,
        "user": _text(headers.get("name") or headers.get("user")) or None,  # whom it is about
        "vhost": _text(headers.get("vhost")) or None,
        "by": _text(headers.get("user_who_performed_action")) or None,
        "peer": _peer(headers),
        "detail": _detail(headers),
        "at": datetime.fromtimestamp(at_ms / 1000, UTC) if isinstance(at_ms, int) else received_at,
        "received_at": received_at,
    }
    # --8<-- [end:broker-event]


def _broker_event_key(routing_key: str, headers: Mapping[str, Any]) -> str:
    """The same event delivered twice has the same key (the broker sends no message id): the
    broker's own headers, with their millisecond timestamp and the peer's port, hashed.
    Headers a copy gained on the way (``x-warren-*``, ``x-death``) do not count."""
    own = {key: value for key, value in headers.items() if not key.startswith("x-")}
    text = json.dumps([routing_key, own], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _text(value: Any) -> str:
    """A header as text: RabbitMQ sends some strings as bytes, or as lists of character
    codes (an Erlang string)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list) and all(isinstance(code, int) for code in value):
        return bytes(code for code in value if 0 <= code < 256).decode(errors="replace")
    return str(value)


def _detail(headers: Mapping[str, Any]) -> str:
    """What happened, in a line: the login's error, the permission's regexes, the tags."""
    parts = []
    if "error" in headers:
        mechanism = _text(headers.get("auth_mechanism"))
        parts.append(_text(headers["error"]) + (f" ({mechanism})" if mechanism else ""))
    parts += [
        f"{key} {_text(headers[key])}"
        for key in ("exchange", "configure", "write", "read")
        if key in headers
    ]
    if isinstance(tags := headers.get("tags"), list):
        parts.append("tags " + (", ".join(_text(tag) for tag in tags) or "none"))
    return " ".join(parts)


_ERLANG_TUPLE = re.compile(r"^\{(\d+(?:,\d+)*)\}$")


def _peer(headers: Mapping[str, Any]) -> str | None:
    """The client's address and port. RabbitMQ sends the address as an Erlang tuple:
    ``{127,0,0,1}``, or eight 16-bit groups for IPv6 (an IPv4 client of a dual-stack listener
    shows as ``::ffff:a.b.c.d``)."""
    host = _text(headers.get("peer_host"))
    if not host:
        connection = _text(headers.get("connection_name"))  # "1.2.3.4:5678 -> 5.6.7.8:5672"
        return connection.split(" -> ")[0] or None
    port = headers.get("peer_port")
    if match := _ERLANG_TUPLE.match(host):
        numbers = [int(n) for n in match.group(1).split(",")]
        if len(numbers) == 4:
            host = str(ipaddress.IPv4Address(bytes(numbers)))
        elif len(numbers) == 8:
            address = ipaddress.IPv6Address(b"".join(n.to_bytes(2, "big") for n in numbers))
            host = str(address.ipv4_mapped or f"[{address}]")
    return f"{host}:{port}" if port is not None else host
