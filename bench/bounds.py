#!/usr/bin/env python3
"""Measures what a client can make a server binary hold, for the before/after table of
the issue "No client can make the server hold more than its configuration allows".
Runs each binary given on the command line on 127.0.0.1 with a fresh data directory
per scenario, side by side, and prints one table. Stops by itself.

    bench/bounds.py OLD_BINARY NEW_BINARY
    SCENARIOS=patch,bodies bench/bounds.py …   (any of patch, bodies, slow, stalled, idem)

Scenarios:
- patch: a 64-device group and the issue's 1,392-byte PATCH of 24 `copy` operations
  from /devices to /devices/- (each doubles the document). Its status and time, the
  server's peak RSS while it runs, and how long a POST of another account, sent 0.2 s
  after the patch, waited.
- bodies: 1,000 connections each send POST /api/Auth/Token with Content-Length
  1 MiB - 1 and all but the last byte of it (held: the body never completes). Peak
  RSS while they are held, then a fresh client's GET /healthz and login times.
- slow: 20 groups of 10,000 devices, so GET /api/changes?limit=1000 is one ~4 MiB
  page; 300 clients (4 KiB receive buffers) ask for it and read 1 KiB a second each
  for 20 s. Peak RSS, what they got (503s, connections cut), a fresh /healthz time.
- stalled: 1,100 clients (76 over the default connection limit) pipeline 100
  GET /api/openapi.json each and never read; then 20 fresh GET /healthz, one at a time.
- idem: 30 cycles of create + delete of a 10,000-device group, with an
  Idempotency-Key on each create and without; the store's growth on disk (after a
  clean stop) and a backup's size, and the difference keys make.
"""

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from faults import non_reader, request, rss_mib, start, token  # noqa: E402


class Peak:
    """Samples a process's RSS every 20 ms in a thread; `.mib` is the highest seen."""

    def __init__(self, proc):
        self.proc, self.mib, self.stop = proc, rss_mib(proc), False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.mib = max(self.mib, rss_mib(self.proc))
            except OSError:
                return
            time.sleep(0.02)

    def done(self):
        self.stop = True
        self.t.join()
        return self.mib


def timed(f, *a, **k):
    t = time.time()
    try:
        status, body = f(*a, **k)
    except OSError as e:
        return time.time() - t, f"error {e.__class__.__name__}", b""
    return time.time() - t, status, body


def stopped(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cli(binary, data, *args):
    out = subprocess.run(
        [binary, "--data-dir", os.path.join(data, "d"), *args],
        cwd=data,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")},
    )
    return out.stdout.strip()


def patch(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            t = token(addr, data)
            other_key = cli(binary, data, "user", "add", "other", "--account", "acme")
            _, body = request(addr, "POST", "/api/Auth/Token", body={"userName": "other", "apiKey": other_key})
            other = json.loads(body)["token"]
            devices = [f"dev-{i:05}" for i in range(64)]
            _, body = request(addr, "POST", "/api/groups", t, {"name": "Doubling", "devices": devices})
            gid = json.loads(body)["id"]
            ops = [{"op": "copy", "from": "/devices", "path": "/devices/-"}] * 24
            data_ = json.dumps(ops).encode()
            raw = (
                f"PATCH /api/groups/{gid} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n"
                f"Authorization: Bearer {t}\r\nContent-Type: application/json-patch+json\r\n"
                f"Content-Length: {len(data_)}\r\n\r\n"
            ).encode() + data_
            peak = Peak(proc)
            result = {}

            def run_patch():
                t0 = time.time()
                s = socket.create_connection(addr, timeout=120)
                s.sendall(raw)
                got = b""
                while True:
                    try:
                        c = s.recv(1 << 16)
                    except OSError:
                        break
                    if not c:
                        break
                    got += c
                result["status"] = got.split(b" ", 2)[1].decode() if got else "no answer"
                result["secs"] = time.time() - t0

            th = threading.Thread(target=run_patch)
            th.start()
            time.sleep(0.2)  # the other account writes while the patch runs: the attack's timing
            wait, status, _ = timed(request, addr, "POST", "/api/groups", other, {"name": "Other"}, timeout=120)
            th.join()
            return {
                "patch: body bytes": str(len(data_)),
                "patch: answer": result.get("status", "?"),
                "patch: answer s": result.get("secs", 0.0),
                "patch: peak RSS MiB": f"{peak.done():.0f}",
                "patch: other account's POST s": wait,
                "patch: other account's POST status": str(status),
            }
        finally:
            proc.kill()
            proc.wait()


def bodies(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            key = open(os.path.join(data, "d", "initial-api-key")).read().strip()
            base = rss_mib(proc)
            peak = Peak(proc)
            n = (1 << 20) - 1
            head = (
                "POST /api/Auth/Token HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n"
                f"Content-Length: {n}\r\n\r\n"
            ).encode()
            chunk = b" " * (n - 1)
            held, refused = [], 0
            for _ in range(1000):
                s = socket.create_connection(addr, timeout=10)
                try:
                    s.sendall(head + chunk)
                except OSError:
                    refused += 1
                held.append(s)
            time.sleep(1)  # the bodies sit in the server: the attack, not a synchronisation
            health_s, health, _ = timed(request, addr, "GET", "/healthz", timeout=10)
            login_s, login, _ = timed(
                request, addr, "POST", "/api/Auth/Token", body={"userName": "admin", "apiKey": key}, timeout=10
            )
            held_peak = peak.done()
            for s in held:
                s.close()
            time.sleep(1)
            return {
                "bodies: connections refused while sending": str(refused),
                "bodies: RSS MiB (before -> peak held -> after close)": f"{base:.0f} -> {held_peak:.0f} -> {rss_mib(proc):.0f}",
                "bodies: fresh /healthz s": health_s,
                "bodies: fresh login s": login_s,
                "bodies: fresh answers": f"{health} / {login}",
            }
        finally:
            proc.kill()
            proc.wait()


def slow(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            t = token(addr, data)
            for g in range(20):
                devices = [f"dev-{g:03}-{i:05}" for i in range(10000)]
                status, body = request(addr, "POST", "/api/groups", t, {"name": f"Big {g}", "devices": devices})
                assert status == 201, body[:200]
            _, page = request(addr, "GET", "/api/changes?limit=1000", t, timeout=120)
            time.sleep(1)
            base = rss_mib(proc)
            peak = Peak(proc)
            raw = f"GET /api/changes?limit=1000 HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {t}\r\n\r\n".encode()
            readers = [non_reader(addr, raw, 1) for _ in range(300)]
            for s in readers:
                s.setblocking(False)
            first = {}
            ended = set()
            healthz = []
            t0 = time.time()
            while time.time() - t0 < 20:
                for i, s in enumerate(readers):
                    if i in ended:
                        continue
                    try:
                        c = s.recv(1024)
                    except BlockingIOError:
                        continue
                    except OSError:
                        ended.add(i)
                        continue
                    if not c:
                        ended.add(i)
                        continue
                    if i not in first:
                        first[i] = c.split(b" ", 2)[1].decode()
                if 5 < time.time() - t0 and len(healthz) < 5:
                    healthz.append(timed(request, addr, "GET", "/healthz", timeout=10)[0])
                time.sleep(1)  # the readers' pace: 1 KiB a second each
            _, metrics = request(addr, "GET", "/metrics", timeout=30)
            cuts = {
                m.group(1): m.group(2)
                for m in re.finditer(rb'connections_closed_total\{reason="(\w+)"\} (\d+)', metrics)
            }
            statuses = {}
            for code in first.values():
                statuses[code] = statuses.get(code, 0) + 1
            for s in readers:
                s.close()
            return {
                "slow: page MB": len(page) / 1e6,
                "slow: RSS MiB (before -> peak)": f"{base:.0f} -> {peak.done():.0f}",
                "slow: first status of 300": " ".join(f"{k}x{v}" for k, v in sorted(statuses.items())),
                "slow: connections ended within 20 s": str(len(ended)),
                "slow: fresh /healthz max s": max(healthz) if healthz else 0.0,
                "slow: cut (slow_reader / write_timeout)": f"{cuts.get(b'slow_reader', b'-').decode()} / {cuts.get(b'write_timeout', b'-').decode()}",
            }
        finally:
            proc.kill()
            proc.wait()


def stalled(binary):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            base = rss_mib(proc)
            raw = b"GET /api/openapi.json HTTP/1.1\r\nHost: m\r\n\r\n"
            held = [non_reader(addr, raw, 100) for _ in range(1100)]
            time.sleep(2)  # let the answers pile up: the attack, not a synchronisation
            waits, failed = [], 0
            for _ in range(20):
                w, status, _ = timed(request, addr, "GET", "/healthz", timeout=10)
                waits.append(w)
                failed += status != 200
            peak = rss_mib(proc)
            for s in held:
                s.close()
            return {
                "stalled 1,100: fresh /healthz median s": statistics.median(waits),
                "stalled 1,100: fresh /healthz max s": max(waits),
                "stalled 1,100: unanswered of 20": str(failed),
                "stalled 1,100: RSS MiB": f"{base:.0f} -> {peak:.0f}",
            }
        finally:
            proc.kill()
            proc.wait()


def dir_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def idem_run(binary, keys):
    with tempfile.TemporaryDirectory() as data:
        proc, addr = start(binary, data)
        try:
            t = token(addr, data)
            before = dir_bytes(os.path.join(data, "d"))
            for c in range(30):
                devices = [f"dev-{c:03}-{i:05}" for i in range(10000)]
                body = json.dumps({"name": f"Cycle {c}", "devices": devices}).encode()
                head = (
                    f"POST /api/groups HTTP/1.1\r\nHost: m\r\nConnection: close\r\n"
                    f"Authorization: Bearer {t}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n"
                )
                if keys:
                    head += f"Idempotency-Key: cycle-{c}\r\n"
                s = socket.create_connection(addr, timeout=60)
                s.sendall(head.encode() + b"\r\n" + body)
                got = b""
                while True:
                    x = s.recv(1 << 20)
                    if not x:
                        break
                    got += x
                s.close()
                gid = json.loads(got.split(b"\r\n\r\n", 1)[1])["id"]
                status, _ = request(addr, "DELETE", f"/api/groups/{gid}", t)
                assert status == 200
            backup = os.path.join(data, "b.jsonl")
            cli(binary, data, "backup", backup)
            backup_bytes = os.path.getsize(backup)
            stopped(proc)
            return dir_bytes(os.path.join(data, "d")) - before, backup_bytes
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def idem(binary):
    with_keys, backup_keys = idem_run(binary, True)
    without, backup_plain = idem_run(binary, False)
    return {
        "idem: store growth MB, 30 cycles with keys": with_keys / 1e6,
        "idem: store growth MB, without keys": without / 1e6,
        "idem: store MB keys add": (with_keys - without) / 1e6,
        "idem: backup MB keys add (uncompressed)": (backup_keys - backup_plain) / 1e6,
    }


SCENARIOS = [("patch", patch), ("bodies", bodies), ("slow", slow), ("stalled", stalled), ("idem", idem)]


def main():
    binaries = sys.argv[1:]
    if not binaries:
        sys.exit(__doc__)
    only = os.environ.get("SCENARIOS", ",".join(n for n, _ in SCENARIOS)).split(",")
    run = [f for name, f in SCENARIOS if name in only]
    results = {}
    for b in binaries:
        results[b] = {}
        for f in run:
            results[b].update(f(b))
            print(f"# {b}: {f.__name__} done", file=sys.stderr, flush=True)
    keys = list(next(iter(results.values())).keys())
    print("| measure | " + " | ".join(binaries) + " |")
    print("|---|" + "---|" * len(binaries))
    for k in keys:
        cells = []
        for b in binaries:
            v = results[b].get(k, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
