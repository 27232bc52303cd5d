#!/usr/bin/env python3
"""A TCP proxy that adds a one-way delay to every byte in each direction, so
that a server on 127.0.0.1 answers as one across a WAN link would: a request
reaches it DELAY ms after it was sent and its answer comes back DELAY ms
later (round trip + 2 x DELAY). This machine's kernel has no tc netem
(CONFIG_NET_SCH_NETEM is not set), so the delay is added here instead.

What it models: the latency of every exchange (each request waits a round
trip; pipelined and parallel requests overlap as on a real link). What it
does not: TCP's own behaviour over a long link (slow start, window limits),
since each side's TCP connection ends at this proxy on loopback.

Usage: delayproxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT DELAY_MS
Prints "ready" once listening; runs until killed.
"""

import asyncio
import sys
import time

CHUNK = 256 << 10
# Chunks held back per direction and connection (each at most CHUNK bytes):
# the reader waits when the link is this full, as TCP would.
QUEUE = 512


async def pump(reader, writer, delay):
    q = asyncio.Queue(QUEUE)

    async def read():
        try:
            while True:
                data = await reader.read(CHUNK)
                await q.put((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await q.put((time.monotonic() + delay, b""))

    async def write():
        try:
            while True:
                due, data = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(read(), write())


async def handle(client_r, client_w, host, port, delay):
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(
        pump(client_r, server_w, delay), pump(server_r, client_w, delay)
    )
    for w in (client_w, server_w):
        try:
            w.close()
        except OSError:
            pass


async def main():
    listen = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    delay = float(sys.argv[3]) / 1000.0
    srv = await asyncio.start_server(
        lambda r, w: handle(r, w, host, int(port), delay), "127.0.0.1", listen
    )
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
