#!/usr/bin/env python3
"""A small OTLP trace receiver for the tests and the demo tour.

serve: listens for OTLP/gRPC (TraceService/Export, grpcio) and OTLP/HTTP (POST /v1/traces with
a protobuf body), decodes each ExportTraceServiceRequest with the opentelemetry-proto package,
and appends every span as one JSON line to --out (flushed at once, so a reader sees it).
tree: prints the spans of a JSON-lines file as trees, one per trace, children under parents.
"""

import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
# The largest body the HTTP endpoint reads; larger ones get 413.
MAX_BODY = 8 * 1024 * 1024


def value(any_value):
    which = any_value.WhichOneof("value")
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(any_value, which)
    return str(any_value)


def spans_of(request, transport, headers):
    for resource_spans in request.resource_spans:
        resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "transport": transport,
                    "headers": headers,
                    "service": resource.get("service.name"),
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": KINDS.get(span.kind, str(span.kind)),
                    "start_unix_nano": span.start_time_unix_nano,
                    "end_unix_nano": span.end_time_unix_nano,
                    "attributes": {a.key: value(a.value) for a in span.attributes},
                    "status": {"code": span.status.code, "message": span.status.message},
                }


class Sink:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.out = open(path, "a", encoding="utf-8")

    def write(self, request, transport, headers):
        with self.lock:
            for span in spans_of(request, transport, headers):
                self.out.write(json.dumps(span) + "\n")
            self.out.flush()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        metadata = {k: v for k, v in context.invocation_metadata() if k.startswith("x-")}
        self.sink.write(request, "grpc", metadata)
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(sink):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            length = int(self.headers.get("content-length", "0"))
            if length > MAX_BODY:
                self.send_error(413)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(self.rfile.read(length))
            except Exception as error:  # a body that is not the protobuf: say so, keep serving
                self.send_error(400, str(error))
                return
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")}
            sink.write(request, "http", headers)
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def serve(args):
    sink = Sink(args.out)
    server = None
    if args.grpc:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(sink), server)
        server.add_insecure_port(args.grpc)
        server.start()
    if args.http:
        host, port = args.http.rsplit(":", 1)
        http = ThreadingHTTPServer((host, int(port)), http_handler(sink))
        threading.Thread(target=http.serve_forever, daemon=True).start()
    print("ready", flush=True)
    if server is not None:
        server.wait_for_termination()
    else:
        threading.Event().wait()


def tree(args):
    with open(args.file, encoding="utf-8") as f:
        spans = [json.loads(line) for line in f if line.strip()]
    by_trace = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    for trace_id, members in by_trace.items():
        if args.trace and trace_id != args.trace:
            continue
        ids = {s["span_id"] for s in members}
        children = {}
        for s in members:
            parent = s["parent_span_id"] if s["parent_span_id"] in ids else None
            children.setdefault(parent, []).append(s)
        print(f"trace {trace_id}")

        def show(span, depth):
            millis = (span["end_unix_nano"] - span["start_unix_nano"]) / 1e6
            attributes = span["attributes"]
            keys = [k for k in args.attributes.split(",") if k in attributes]
            detail = " ".join(f"{k}={attributes[k]}" for k in keys)
            print(f"{'  ' * (depth + 1)}{span['service']}: {span['name']} [{span['kind']}] {millis:.2f} ms {detail}")
            for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start_unix_nano"]):
                show(child, depth + 1)

        for root in sorted(children.get(None, []), key=lambda s: s["start_unix_nano"]):
            show(root, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve")
    s.add_argument("--grpc", help="HOST:PORT for OTLP/gRPC")
    s.add_argument("--http", help="HOST:PORT for OTLP/HTTP")
    s.add_argument("--out", required=True, help="JSON-lines file the spans are appended to")
    t = commands.add_parser("tree")
    t.add_argument("file")
    t.add_argument("--trace", help="only this trace id")
    t.add_argument(
        "--attributes",
        default="http.response.status_code,weft.route,weft.backend,weft.policy.verdict,weft.reason,http.request.resend_count",
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
    else:
        tree(args)


if __name__ == "__main__":
    sys.exit(main())
