#!/usr/bin/env python3
"""Measures what clients that never read and unbounded answers cost a server binary,
for the before/after table of the issue "Nothing outside a request can stop, starve or
exhaust the service". Runs each binary given on the command line on 127.0.0.1 with a
fresh data directory, side by side, and prints one table. Stops by itself.

    bench/faults.py OLD_BINARY NEW_BINARY
    SCENARIOS=stalled bench/faults.py …   (or big)

Scenarios (each against a fresh server):
- stalled: 1,030 connections (over the default limit of 1,024) pipeline 100 requests
  for /api/openapi.json each and never read (4 KiB receive buffers); then 20 fresh
  clients, one after another, each GET /healthz on a new connection (10 s timeout).
- feed: 200 groups of 10,000 devices (each change-feed entry carries its group, about
  230 KB); the bytes of one GET /api/changes?limit=1000, then twelve clients that send
  it and never read: the server's RSS growth.
- lookup: the same groups all hold device "shared": the bytes of the first answer to
  GET /api/devices/shared/groups?limit=1000 (the base ignores limit: the whole list),
  then sixteen non-reading clients of the unpaged lookup: RSS growth.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def start(binary, data):
    log = open(os.path.join(data, "log"), "w+")
    proc = subprocess.Popen(
        [binary, "--data-dir", os.path.join(data, "d"), "serve", "--listen", "127.0.0.1:0"],
        # Its own directory, so no ./config.toml of the caller's is read.
        cwd=data,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")},
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"listening on http://([0-9.]+):(\d+)", log.read())
        if m:
            return proc, (m.group(1), int(m.group(2)))
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"{binary} did not start")


def rss_mib(proc):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def request(addr, method, path, token=None, body=None, timeout=30):
    s = socket.create_connection(addr, timeout=timeout)
    head = f"{method} {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    chunks = []
    while True:
        c = s.recv(1 << 20)
        if not c:
            break
        chunks.append(c)
    s.close()
    raw = b"".join(chunks)
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" in head.lower():
        body_bytes, i = b"", 0
        while True:
            j = rest.index(b"\r\n", i)
            n = int(rest[i:j], 16)
            if n == 0:
                break
            body_bytes += rest[j + 2 : j + 2 + n]
            i = j + 4 + n
        rest = body_bytes
    return status, rest


def token(addr, data):
    key = open(os.path.join(data, "d", "initial-api-key")).read().strip()
    _, body = request(addr, "POST", "/api/Auth/Token", body={"userName": "admin", "apiKey": key})
    return json.loads(body)["token"]


def non_reader(addr, raw, count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(addr)
    s.sendall(raw * count)
    return s


def stalled(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            base = rss_mib(proc)
            raw = b"GET /api/openapi.json HTTP/1.1\r\nHost: m\r\n\r\n"
            held = [non_reader(addr, raw, 100) for _ in range(1030)]
            time.sleep(2)  # let the answers pile up: the attack, not a synchronisation
            waits, failed = [], 0
            for _ in range(20):
                t = time.time()
                try:
                    status, _ = request(addr, "GET", "/healthz", timeout=10)
                    waits.append(time.time() - t)
                    failed += status != 200
                except OSError:
                    failed += 1
                    waits.append(10.0)
            peak = rss_mib(proc)
            for s in held:
                s.close()
            return {
                "fresh median s": statistics.median(waits),
                "fresh max s": max(waits),
                "fresh unanswered": failed,
                "RSS MiB": f"{base:.0f} -> {peak:.0f}",
            }
        finally:
            proc.kill()
            proc.wait()


def big_groups(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            t = token(addr, data)
            for g in range(200):
                devices = ["shared"] + [f"dev-{g:03}-{i:05}" for i in range(9999)]
                status, body = request(addr, "POST", "/api/groups", t, {"name": f"Big {g}", "devices": devices})
                assert status == 201, body[:200]
            out = {}
            _, page = request(addr, "GET", "/api/changes?limit=1000", t, timeout=120)
            out["feed page MB"] = len(page) / 1e6
            base = rss_mib(proc)
            raw = f"GET /api/changes?limit=1000 HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {t}\r\n\r\n".encode()
            held = [non_reader(addr, raw, 1) for _ in range(12)]
            time.sleep(3)
            out["12 feed non-readers RSS MiB"] = f"{base:.0f} -> {rss_mib(proc):.0f}"
            for s in held:
                s.close()
            _, first = request(addr, "GET", "/api/devices/shared/groups?limit=1000", t, timeout=120)
            out["lookup page MB"] = len(first) / 1e6
            time.sleep(1)
            base = rss_mib(proc)
            raw = f"GET /api/devices/shared/groups HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {t}\r\n\r\n".encode()
            held = [non_reader(addr, raw, 1) for _ in range(16)]
            time.sleep(3)
            out["16 lookup non-readers RSS MiB"] = f"{base:.0f} -> {rss_mib(proc):.0f}"
            for s in held:
                s.close()
            return out
        finally:
            proc.kill()
            proc.wait()


def main():
    binaries = sys.argv[1:]
    if not binaries:
        sys.exit(__doc__)
    only = os.environ.get("SCENARIOS", "stalled,big").split(",")
    run = [f for name, f in [("stalled", stalled), ("big", big_groups)] if name in only]
    results = {b: {k: v for f in run for k, v in f(b).items()} for b in binaries}
    keys = list(next(iter(results.values())).keys())
    print("| measure | " + " | ".join(binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for k in keys:
        cells = []
        for b in binaries:
            v = results[b][k]
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
