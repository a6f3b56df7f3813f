"""The py-spy summary charges each sample to the innermost library frame."""

from __future__ import annotations

from loadtests.profile_summary import summarise

LOOP = "run (asyncio/runners.py:118);_run_once (asyncio/base_events.py:1922)"


def test_samples_go_to_the_innermost_frame_outside_the_standard_library() -> None:
    lines = [
        # Warren's handler calls PyMongo, which waits in asyncio: PyMongo's time.
        f"{LOOP};follow_saga (services/order/handlers.py:146);"
        "insert_one (pymongo/asynchronous/collection.py:886);write (asyncio/streams.py:343) 7",
        # Warren's own code at the top of the stack.
        f"{LOOP};follow_saga (services/order/handlers.py:150) 2",
        # OpenTelemetry shows as a namespace package, and inside FastStream.
        f"{LOOP};start_span (trace/__init__.py:1200) 3",
        f"{LOOP};consume_scope (faststream/opentelemetry/middleware.py:303) 1",
        # The event loop itself.
        f"{LOOP} 4",
        "not a sample line",
    ]
    by_package, total = summarise(lines)
    assert total == 17
    assert by_package == {
        "pymongo": 7,
        "Warren: services": 2,
        "opentelemetry": 3,
        "opentelemetry (FastStream's middleware)": 1,
        "standard library": 4,
    }
