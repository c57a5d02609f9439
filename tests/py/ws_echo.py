"""A WebSocket echo server and client for the waypoint tests, on the `websockets` package. The
client sends three text frames and prints each echo on its own line."""

import asyncio
import sys


def serve(host, port):
    from websockets.asyncio.server import serve as ws_serve

    async def echo(connection):
        async for message in connection:
            await connection.send("echo:" + message)

    async def main():
        async with ws_serve(echo, host, int(port)):
            await asyncio.Future()

    asyncio.run(main())


def client(url):
    from websockets.sync.client import connect

    with connect(url, open_timeout=10) as connection:
        for frame in ("one", "two", "three"):
            connection.send(frame)
            print(connection.recv(timeout=10))


if __name__ == "__main__":
    {"serve": lambda: serve(sys.argv[2], sys.argv[3]), "client": lambda: client(sys.argv[2])}[
        sys.argv[1]
    ]()
