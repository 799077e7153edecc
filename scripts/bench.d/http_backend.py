#!/usr/bin/env python3
"""A small keep-alive HTTP/1.1 backend for the HAProxy benchmark: answers every request with
its own name (argv[2]) on 127.0.0.1:argv[1]. asyncio, so one process serves many connections."""
import asyncio
import sys

PORT, NAME = int(sys.argv[1]), sys.argv[2].encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s\n" % (len(NAME) + 1, NAME)


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=512)
    async with server:
        await server.serve_forever()


asyncio.run(main())
