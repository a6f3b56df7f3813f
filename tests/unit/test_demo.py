"""`warren demo` follows an order through a database outage: a poll that times out is a reason to
keep waiting (chapter 8 has the reader stop MongoDB while the demo waits), never a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from typer.testing import CliRunner

from cli import demo, main

ORDER_ID = "41a5b9e3-0ae7-49cd-aac8-8d76bf72a47a"
UNTRACED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": None,
    "OTEL_TRACES_EXPORTER": None,
    "WARREN_COMPOSE": None,
}


def order_view(status: str, *types: str) -> dict[str, object]:
    return {
        "order_id": ORDER_ID,
        "status": status,
        "history": [{"version": v, "type": t} for v, t in enumerate(types, start=1)],
    }


def api_answering(
    polls: Iterator[Callable[[httpx.Request], httpx.Response]],
) -> httpx.MockTransport:
    """POST /orders is accepted; each GET is answered by the next of ``polls``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"order_id": ORDER_ID, "status": "PENDING"})
        return next(polls)(request)

    return httpx.MockTransport(handle)


def times_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def answers(status_code: int, body: dict[str, object]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status_code, json=body)


@pytest.fixture
def use_transport(monkeypatch: pytest.MonkeyPatch) -> Callable[[httpx.MockTransport], None]:
    real_client = httpx.Client

    def use(transport: httpx.MockTransport) -> None:
        monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=transport, **kw))

    monkeypatch.setattr(demo.time, "sleep", lambda seconds: None)
    return use


def test_the_demo_keeps_waiting_through_read_timeouts_and_reports_the_outcome(
    use_transport: Callable[[httpx.MockTransport], None],
) -> None:
    reserved = order_view("RESERVED", "order.placed", "order.stock-reserved")
    confirmed = order_view("CONFIRMED", "order.placed", "order.stock-reserved", "order.confirmed")
    use_transport(
        api_answering(
            iter(
                [
                    answers(200, reserved),
                    times_out,
                    times_out,
                    answers(503, {"detail": "the database is not answering; retry"}),
                    answers(200, confirmed),
                ]
            )
        )
    )

    result = CliRunner().invoke(main.app, ["demo", "--timeout", "120"], env=UNTRACED)

    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "still waiting: GET /orders/41a5b9e3... failed (ReadTimeout)" in result.output
    assert "still waiting: GET /orders/41a5b9e3... answered 503" in result.output
    assert result.output.count("still waiting") == 2  # said once per change, not per poll
    assert "v3  order.confirmed" in result.output
    assert "order 41a5b9e3 is CONFIRMED" in result.output


def test_the_demo_gives_up_at_its_timeout_with_a_message_not_a_traceback(
    use_transport: Callable[[httpx.MockTransport], None],
) -> None:
    def forever() -> Iterator[Callable[[httpx.Request], httpx.Response]]:
        while True:
            yield times_out

    use_transport(api_answering(forever()))

    result = CliRunner().invoke(main.app, ["demo", "--timeout", "0.2"], env=UNTRACED)

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "still waiting" in result.output
    assert f"order {ORDER_ID} not final after 0.2s" in result.output
    assert "Traceback" not in result.output
