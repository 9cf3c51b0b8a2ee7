"""An OTLP/HTTP trace receiver in the test process: what the live service's exporters send
(POST /v1/traces, protobuf), decoded span by span, so that an end-to-end test reads the spans
the ingress and the replicas really exported."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root without a remote parent
    attributes: dict[str, Any]
    component: str  # the exporting process's rankserve.component (ingress, replica, ...)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


class Receiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    span = ReceivedSpan(
                        s.name,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        {a.key: _value(a.value) for a in s.attributes},
                        str(resource.get("rankserve.component", "")),
                    )
                    with self._lock:
                        self.spans.append(span)

    def wait_for(self, trace_id: str, expect: dict[str, int], timeout: float = 30.0) -> list:
        """The spans of `trace_id` once `expect` (name: count) have come: each process's
        exporter sends its batch in its own time."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = [s for s in self.spans if s.trace_id == trace_id]
            names = [s.name for s in got]
            if all(names.count(n) >= k for n, k in expect.items()):
                return got
            if time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    def close(self) -> None:
        self._server.shutdown()
