"""Fault injection for the delivery-guarantee tests: crash a process at a named point, once.

Inert unless ``WARREN_CRASH_AT`` names the point: ``order.after-append`` (an order saved, its
``order.placed`` not yet published) or ``<queue>:after-handler`` (a consumer saved its state,
its outcome not yet published nor the message acked), e.g.
``inventory.order-placed:after-handler``. Set it, and
set ``WARREN_CRASH_MARKER`` to a file path: the first time the process reaches that point it
creates the marker and kills itself with SIGKILL (no cleanup, no ack, no flush), exactly as a
power cut would; after a restart the marker exists and the point does nothing.

The points sit where a crash hurts most: state saved, message not yet published or acked.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


# --8<-- [start:crash-point]
def crash_point(name: str) -> None:
    if os.environ.get("WARREN_CRASH_AT") != name:
        return
    marker = Path(os.environ.get("WARREN_CRASH_MARKER", f"/tmp/warren-crash-{name}"))
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return  # crashed here once already
    os.kill(os.getpid(), signal.SIGKILL)
    # --8<-- [end:crash-point]
