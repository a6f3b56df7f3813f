"""Traces without Jaeger: a tiny OTLP/HTTP receiver, and an order's trace printed as a tree.

``warren traces collect`` listens like a collector on ``:4318`` (``POST /v1/traces``,
protobuf or JSON) and appends every span as one JSON line to a file. ``make run`` starts it and
points every service at it, so ``warren traces show ORDER_ID`` can print the order's trace as
an indented tree, with the time each span took and where it started relative to the root.
The tests use the same receiver to assert on real spans from real processes.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import typer
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from rich.console import Console
from rich.tree import Tree

app = typer.Typer(
    help="Traces without Jaeger: collect spans, print an order's trace.", no_args_is_help=True
)
console = Console()

DEFAULT_SPANS_FILE = Path(".run/spans.jsonl")
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def spans_from_request(request: ExportTraceServiceRequest) -> Iterator[dict[str, Any]]:
    """Flatten an OTLP export request into one plain dict per span."""
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex() or None,
                    "name": span.name,
                    "kind": KINDS.get(span.kind, str(span.kind)),
                    "service": resource.get("service.name", "?"),
                    "scope": scope_spans.scope.name,
                    "start_ns": span.start_time_unix_nano,
                    "end_ns": span.end_time_unix_nano,
                    "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                    "links": [
                        {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                        for link in span.links
                    ],
                    "status": span.status.code,
                    "events": [event.name for event in span.events],
                }


class SpanSink:
    """Appends spans to a JSON-lines file, thread-safely."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, spans: Iterable[dict[str, Any]]) -> int:
        lines = [json.dumps(span) + "\n" for span in spans]
        with self._lock, self.path.open("a") as file:
            file.writelines(lines)
        return len(lines)


def make_server(host: str, port: int, sink: SpanSink) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/traces":
                self.send_error(404, "only /v1/traces is received here")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            try:
                if "json" in (self.headers.get("Content-Type") or ""):
                    Parse(body.decode(), request)
                else:
                    request.ParseFromString(body)
            except Exception as exc:
                self.send_error(400, f"not an OTLP trace export: {exc}")
                return
            sink.write(spans_from_request(request))
            reply = ExportTraceServiceResponse().SerializeToString()
            # The spans are written: an exporter that gave up waiting (its process is stopping)
            # has lost only the answer, not worth a traceback in the run's log.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per export batch would drown the run's log

    return ThreadingHTTPServer((host, port), Handler)


def load_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trace_ids_of_order(spans: list[dict[str, Any]], order_id: str) -> list[str]:
    """Traces that have a span tagged with this order (oldest first)."""
    first_seen: dict[str, int] = {}
    for span in spans:
        if span["attributes"].get("order.id") == order_id:
            first_seen.setdefault(span["trace_id"], span["start_ns"])
            first_seen[span["trace_id"]] = min(first_seen[span["trace_id"]], span["start_ns"])
    return sorted(first_seen, key=first_seen.__getitem__)


def render_tree(spans: list[dict[str, Any]], trace_id: str) -> Tree:
    in_trace = sorted((s for s in spans if s["trace_id"] == trace_id), key=lambda s: s["start_ns"])
    ids = {s["span_id"] for s in in_trace}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in in_trace:
        parent = span["parent_span_id"] if span["parent_span_id"] in ids else None
        children[parent].append(span)
    origin = in_trace[0]["start_ns"] if in_trace else 0
    tree = Tree(f"trace [bold]{trace_id}[/] ({len(in_trace)} spans)")

    def label(span: dict[str, Any]) -> str:
        took = (span["end_ns"] - span["start_ns"]) / 1e6
        at = (span["start_ns"] - origin) / 1e6
        links = (
            f" [magenta]↪ linked to {span['links'][0]['trace_id'][:8]}…[/]" if span["links"] else ""
        )
        error = " [red]ERROR[/]" if span["status"] == 2 else ""
        return (
            f"[cyan]{span['service']}[/] {span['name']} [dim]{span['kind']}[/]"
            f"  +{at:.1f} ms  {took:.1f} ms{error}{links}"
        )

    def add(node: Tree, parent_id: str | None) -> None:
        for span in children.get(parent_id, []):
            add(node.add(label(span)), span["span_id"])

    add(tree, None)
    return tree


@app.command("collect")
def collect(
    output: Path = typer.Option(DEFAULT_SPANS_FILE, help="JSON-lines file to append spans to."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(4318, help="Port (4318 is OTLP/HTTP's)."),
) -> None:
    """Receive OTLP/HTTP trace exports and keep every span in a file (a stand-in for Jaeger)."""
    server = make_server(host, port, SpanSink(output))
    console.print(f"OTLP receiver on http://{host}:{port}/v1/traces, spans kept in {output}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("show")
def show(
    order_id: str = typer.Argument(..., help="The order whose trace to print."),
    spans_file: Path = typer.Option(
        DEFAULT_SPANS_FILE, help="Spans collected by `warren traces collect`."
    ),
    include_reads: bool = typer.Option(
        False, "--reads", help="Also show the GET /orders/{id} traces that read the order."
    ),
) -> None:
    """Print an order's trace as an indented tree (from the spans the local run collected)."""
    spans = load_spans(spans_file)
    trace_ids = trace_ids_of_order(spans, order_id)
    if not include_reads:
        roots = {s["trace_id"]: s["name"] for s in spans if not s["parent_span_id"]}
        trace_ids = [t for t in trace_ids if not roots.get(t, "").startswith("GET ")]
    if not trace_ids:
        console.print(
            f"[red]no spans for order {order_id} in {spans_file}[/] (is `make run` collecting?)"
        )
        raise typer.Exit(1)
    for trace_id in trace_ids:
        console.print(render_tree(spans, trace_id))
