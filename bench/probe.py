#!/usr/bin/env python3
"""Helpers of bench/scale.sh that bash cannot do precisely.

ready ADMIN_PORT -- COMMAND...
    Starts COMMAND and prints its pid, then the milliseconds from the start to the first
    200 of GET /readyz on 127.0.0.1:ADMIN_PORT (polled every millisecond), on one line:
    "pid ms". The process is left running.

hold PORT TOKEN COUNT...
    Opens keep-alive connections to 127.0.0.1:PORT up to each COUNT in turn; each sends one
    GET /api/v1/me with the client token and reads the whole answer, 50 at a time, then stays
    open and idle. After each COUNT it prints "open N" and waits for a line on stdin; at EOF
    it closes everything and exits.

relay PORT UPSTREAM_PORT
    A plain TCP relay from 127.0.0.1:PORT to 127.0.0.1:UPSTREAM_PORT: for each connection,
    one thread per direction copies what arrives with 512 KiB reads and whole writes, and
    nothing else (no parsing, no header set). The reference, in bench/scale.sh's 1 GiB figures,
    for what passing the bytes through one more process costs, with nothing else done.

load PORT TOKEN COUNT CONNECTIONS
    Sends exactly COUNT GET /api/v1/me over CONNECTIONS keep-alive connections at once (for
    instruction counts per request, bench/profile.sh) and fails on any answer but 200.
"""

import asyncio
import http.client
import resource
import socket
import subprocess
import sys
import threading
import time

IN_FLIGHT = 50


def ready(admin_port, command):
    start = time.monotonic()
    # Its stdout must not be ours: the caller reads ours to the end.
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    while True:
        if process.poll() is not None:
            sys.exit(f"the command exited with {process.returncode} before /readyz answered 200")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() - start > 30:
            sys.exit("/readyz did not answer 200 within 30 s")
        time.sleep(0.001)
    print(process.pid, f"{(time.monotonic() - start) * 1000:.1f}", flush=True)


async def one_request(port, token, held, gate):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/v1/me HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        await read_answer(reader)
        held.append(writer)


async def load(port, token, count, connections):
    async def connection(share):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET /api/v1/me HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        for _ in range(share):
            writer.write(request)
            await read_answer(reader)
        writer.close()

    shares = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    await asyncio.gather(*(connection(share) for share in shares))


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"answered {status.decode()}: {head!r}")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)


async def hold(port, token, counts):
    held = []
    gate = asyncio.Semaphore(IN_FLIGHT)
    loop = asyncio.get_running_loop()
    for count in counts:
        await asyncio.gather(*(one_request(port, token, held, gate) for _ in range(count - len(held))))
        print("open", len(held), flush=True)
        if not await loop.run_in_executor(None, sys.stdin.readline):
            break
    for writer in held:
        writer.close()


def relay(port, upstream_port):
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    while True:
        caller, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for source, sink in ((caller, upstream), (upstream, caller)):
            threading.Thread(target=pump, args=(source, sink), daemon=True).start()


def pump(source, sink):
    buffer = memoryview(bytearray(512 * 1024))
    try:
        while n := source.recv_into(buffer):
            sink.sendall(buffer[:n])
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        source.close()
        sink.close()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    match sys.argv[1:]:
        case ["ready", admin_port, "--", *command] if command:
            ready(int(admin_port), command)
        case ["relay", port, upstream_port]:
            relay(int(port), int(upstream_port))
        case ["load", port, token, count, connections]:
            asyncio.run(load(int(port), token, int(count), int(connections)))
        case ["hold", port, token, *counts] if counts:
            asyncio.run(hold(int(port), token, [int(c) for c in counts]))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
