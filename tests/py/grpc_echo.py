"""A gRPC server and client for the waypoint tests, on grpcio with raw-bytes messages (no
generated code): `weft.Echo/Unary` echoes one message with a trailer (or fails with NOT_FOUND
when asked), `weft.Echo/Chat` echoes a bidirectional stream. The client prints one JSON line
of what it saw; `chaos` makes one call with `x-chaos: 1` and one without."""

import json
import sys
from concurrent import futures

import grpc


def unary(request, context):
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "unary"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "asked to fail")
    return b"echo:" + request + b" routed=" + metadata.get("x-weft-grpc", "-").encode()


def chat(requests, context):
    for message in requests:
        yield b"echo:" + message
    context.set_trailing_metadata((("x-trailer", "chat"),))


def serve(address):
    handler = grpc.method_handlers_generic_handler(
        "weft.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()


def client(target):
    seen = {}
    with grpc.insecure_channel(target) as channel:
        unary_call = channel.unary_unary("/weft.Echo/Unary")
        reply, call = unary_call.with_call(b"hello", timeout=10)
        seen["unary"] = reply.decode()
        seen["unary_code"] = call.code().name
        seen["unary_trailer"] = dict(call.trailing_metadata()).get("x-trailer")
        try:
            unary_call(b"fail", timeout=10)
            seen["fail_code"] = "OK"
        except grpc.RpcError as e:
            seen["fail_code"] = e.code().name
            seen["fail_details"] = e.details()
            seen["fail_trailer"] = dict(e.trailing_metadata() or ()).get("x-trailer")
        chat_call = channel.stream_stream("/weft.Echo/Chat")
        call = chat_call(iter([b"a", b"b", b"c"]), timeout=10)
        seen["chat"] = [m.decode() for m in call]
        seen["chat_code"] = call.code().name
        seen["chat_trailer"] = dict(call.trailing_metadata()).get("x-trailer")
        try:
            channel.unary_unary("/other.Service/Call")(b"x", timeout=10)
            seen["unrouted_code"] = "OK"
        except grpc.RpcError as e:
            seen["unrouted_code"] = e.code().name
    print(json.dumps(seen))


def chaos(target):
    """One unary call carrying `x-chaos: 1` (a fault-injection match), and one without."""
    seen = {}
    with grpc.insecure_channel(target) as channel:
        unary_call = channel.unary_unary("/weft.Echo/Unary")
        try:
            unary_call(b"hello", timeout=10, metadata=(("x-chaos", "1"),))
            seen["chaos_code"] = "OK"
        except grpc.RpcError as e:
            seen["chaos_code"] = e.code().name
            seen["chaos_details"] = e.details()
        reply, call = unary_call.with_call(b"calm", timeout=10)
        seen["calm"] = reply.decode()
        seen["calm_code"] = call.code().name
    print(json.dumps(seen))


if __name__ == "__main__":
    {"serve": serve, "client": client, "chaos": chaos}[sys.argv[1]](sys.argv[2])
