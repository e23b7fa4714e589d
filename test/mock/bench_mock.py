#!/usr/bin/env python3
"""Throughput check of the mock provider (stdlib only).

1. Zero latency: K keep-alive connections (asyncio raw protocol client) send Anthropic
   /v1/messages requests back to back for D seconds -> requests/s.
2. Slow requests: N connections each send one request with latency=L ms at once ->
   all must be in flight together (stats max_in_flight == N), wall time ~ L.
3. The same two measurements with wrk (/usr/bin/wrk) if it is installed.

Usage: python3 test/mock/bench_mock.py [--port P (use a running mock)] [--connections 32]
       [--duration 3] [--slow 500] [--latency-ms 500] [--min-rps 5000]
Exits non-zero if the targets (min req/s, max_in_flight == slow) are not met.
"""

import argparse
import asyncio
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BODY = json.dumps({"model": "claude-bench", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hello benchmark"}]}).encode()


def build_request(port, extra_headers=""):
    return (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"
            f"content-type: application/json\r\n{extra_headers}"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


# -----------------------------------------------------------------------------
# Load client: one asyncio.Protocol per connection; sends the next request as soon as
# the previous response is complete (no futures or awaits on the hot path).
# -----------------------------------------------------------------------------

class LoadClient(asyncio.Protocol):
    def __init__(self, request, counter, repeat, done):
        self.request, self.counter, self.repeat, self.done = request, counter, repeat, done
        self.buf = b""
        self.need = None            # bytes of the current response still expected in total

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        buf = self.buf + data
        while True:
            if self.need is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end]
                status = int(head[9:12])
                i = head.find(b"Content-Length: ")
                length = int(head[i + 16:head.find(b"\r\n", i)])
                self.need = end + 4 + length
                if status != 200:
                    self.counter["errors"] += 1
            if len(buf) < self.need:
                break
            buf = buf[self.need:]
            self.need = None
            self.counter["done"] += 1
            if self.repeat[0]:
                self.transport.write(self.request)
            else:
                self.transport.close()
                break
        self.buf = buf

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


async def run_load(port, connections, duration, request):
    loop = asyncio.get_running_loop()
    counter = {"done": 0, "errors": 0}
    repeat = [True]
    dones = []
    for _ in range(connections):
        done = loop.create_future()
        dones.append(done)
        await loop.create_connection(lambda d=done: LoadClient(request, counter, repeat, d),
                                     "127.0.0.1", port)
    await asyncio.sleep(0.3)                            # warm-up
    start_count, t0 = counter["done"], time.perf_counter()
    await asyncio.sleep(duration)
    n, dt = counter["done"] - start_count, time.perf_counter() - t0
    repeat[0] = False
    await asyncio.wait_for(asyncio.gather(*dones), 10)
    return n / dt, counter["errors"]


async def run_slow(port, n, latency_ms):
    """n connections, one slow request each, all sent at once -> (wall seconds, statuses)."""
    request = build_request(port, f"x-mock: latency={latency_ms}\r\n")

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        await reader.readexactly(length)
        writer.close()
        return int(head[9:12])

    t0 = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0, statuses


# -----------------------------------------------------------------------------
# Helpers: control API, wrk, mock process
# -----------------------------------------------------------------------------

def control(port, method, name):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_mock/{name}", method=method,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run_wrk(port, connections, duration, extra_header=None):
    """Requests/s measured by wrk with a small Lua script for the POST body, or None."""
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    lua = ("wrk.method = \"POST\"\n"
           f"wrk.body = {json.dumps(BODY.decode())}\n"
           "wrk.headers[\"x-api-key\"] = \"bench\"\n"
           "wrk.headers[\"anthropic-version\"] = \"2023-06-01\"\n"
           "wrk.headers[\"content-type\"] = \"application/json\"\n")
    if extra_header:
        lua += f"wrk.headers[\"x-mock\"] = \"{extra_header}\"\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-s", f.name,
                              f"http://127.0.0.1:{port}/v1/messages"],
                             capture_output=True, text=True, timeout=duration + 30).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (float(m.group(1)) if m else None), (int(non2xx.group(1)) if non2xx else 0)


def start_mock():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_provider.py"), "--port", "0",
                             "--quiet"], stdout=subprocess.PIPE)
    if not select.select([proc.stdout], [], [], 10)[0]:
        proc.kill()
        sys.exit("mock did not start")
    return proc, int(proc.stdout.readline().split()[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, help="use an already running mock")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--latency-ms", type=int, default=500)
    ap.add_argument("--min-rps", type=float, default=5000)
    ap.add_argument("--no-wrk", action="store_true")
    args = ap.parse_args()

    proc, port = (None, args.port) if args.port else start_mock()
    ok = True
    try:
        control(port, "POST", "reset")
        rps, errors = asyncio.run(run_load(port, args.connections, args.duration, build_request(port)))
        print(f"python client: {rps:,.0f} req/s at zero latency, {args.connections} keep-alive "
              f"connections, {args.duration:g} s, non-200: {errors}")
        ok &= rps >= args.min_rps and errors == 0

        control(port, "POST", "reset")
        wall, statuses = asyncio.run(run_slow(port, args.slow, args.latency_ms))
        st = control(port, "GET", "stats")
        good = statuses.count(200)
        print(f"python client: {args.slow} concurrent requests with latency={args.latency_ms} ms: "
              f"{good} x 200 in {wall:.2f} s, max_in_flight={st['max_in_flight']}, "
              f"connections_total={st['connections_total']}")
        ok &= good == args.slow and st["max_in_flight"] == args.slow

        if not args.no_wrk and shutil.which("wrk"):
            for c in (16, args.connections, 128):
                control(port, "POST", "reset")
                rps_w, non2xx = run_wrk(port, c, int(max(1, args.duration)))
                print(f"wrk: {rps_w:,.0f} req/s at zero latency, {c} connections, non-2xx: {non2xx}")
            control(port, "POST", "reset")
            secs = int(max(2, args.duration))
            rps_w, non2xx = run_wrk(port, args.slow, secs, f"latency={args.latency_ms}")
            st = control(port, "GET", "stats")
            # wrk counts responses completed inside its window: only the full latency
            # rounds that end before the window closes.
            rounds = math.ceil(secs * 1000 / args.latency_ms) - 1
            print(f"wrk: {rps_w:,.0f} req/s with latency={args.latency_ms} ms and {args.slow} "
                  f"connections (ideal in a {secs} s window: {rounds} rounds = "
                  f"{rounds * args.slow / secs:,.0f} req/s), max_in_flight={st['max_in_flight']}, "
                  f"non-2xx: {non2xx}")
        elif not args.no_wrk:
            print("wrk: not installed, skipped")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
