#!/usr/bin/env python3
# Measures two authentication properties of a real fleetgroups server and prints tables
# (figures for SECURITY.md; not a test):
#   1. Login flood: while N threads trade a valid API key for tokens as fast as they can
#      (each an argon2id verification, bounded by auth.hash_concurrency), how long do
#      ordinary GETs of other clients take? Compared with the same GETs on an idle server.
#   2. Failed-login timing: median and spread of the answer time for an unknown user, a
#      wrong key and a disabled user, which docs/api/http.md "Authentication" wants indistinguishable.
# It starts the binary itself (default target/release/fleetgroups) on 127.0.0.1 with a
# temporary data directory, and stops it at the end. Loopback only, bounded in time.
#
# usage: bench/auth_abuse.py [--bin PATH] [--flood-threads 8] [--seconds 10] [--samples 200]

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start(binary, data, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")}
    env.update(env_extra)
    p = subprocess.Popen(
        [binary, "--data-dir", data, "serve", "--listen", "127.0.0.1:0"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    for line in p.stderr:
        m = re.search(r"listening on http://([0-9.]+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, (m.group(1), int(m.group(2)))
        if time.time() > deadline:
            break
    p.kill()
    sys.exit("server did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def cli(binary, data, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")}
    out = subprocess.run([binary, "--data-dir", data, *args], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def request(addr, method, path, body=None, token=None):
    c = http.client.HTTPConnection(*addr, timeout=60)
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    t = time.perf_counter()
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    payload = r.read()
    took = time.perf_counter() - t
    c.close()
    return r.status, payload, took


def login(addr, user, key):
    status, payload, took = request(addr, "POST", "/api/Auth/Token",
                                    {"userName": user, "apiKey": key})
    return status, (json.loads(payload).get("token") if status == 200 else None), took


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ms(x):
    return f"{x * 1000:8.2f}"


def get_latencies(addr, token, seconds):
    out = []
    end = time.time() + seconds
    while time.time() < end:
        status, _, took = request(addr, "GET", "/api/groups", token=token)
        assert status == 200, status
        out.append(took)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/fleetgroups")
    ap.add_argument("--flood-threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--samples", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        # First start creates admin; then add the flooding user and a disabled one.
        p, _ = start(a.bin, data, {})
        stop(p)
        admin_key = open(os.path.join(data, "initial-api-key")).read().strip()
        flood_key = cli(a.bin, data, "user", "add", "flooder")
        carol_key = cli(a.bin, data, "user", "add", "carol")
        cli(a.bin, data, "user", "set", "carol", "--disabled", "true")
        # The failed-login limiter would answer the timing samples with 429s; lift it.
        p, addr = start(a.bin, data, {"FLEETGROUPS_AUTH_MAX_FAILED_LOGINS": "1000000"})
        try:
            _, token, _ = login(addr, "admin", admin_key)
            status, _, _ = request(addr, "POST", "/api/groups", {"name": "g", "devices": ["d1"]}, token)
            assert status == 201

            idle = get_latencies(addr, token, a.seconds)
            logins, stop_flood = [], threading.Event()

            def flood():
                while not stop_flood.is_set():
                    status, _, took = login(addr, "flooder", flood_key)
                    assert status == 200, status
                    logins.append(took)

            threads = [threading.Thread(target=flood) for _ in range(a.flood_threads)]
            for t in threads:
                t.start()
            time.sleep(1)  # let the flood reach a steady state before measuring
            busy = get_latencies(addr, token, a.seconds)
            stop_flood.set()
            for t in threads:
                t.join()

            print(f"\nLogin flood: {a.flood_threads} threads exchanging a valid key, GET /api/groups measured meanwhile")
            print(f"{'phase':<28}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
            for name, xs in [("GET, idle server", idle), ("GET, during login flood", busy),
                             ("login (argon2id) in flood", logins)]:
                print(f"{name:<28}{len(xs):>9}{ms(pct(xs, .5))}{ms(pct(xs, .95))}{ms(pct(xs, .99))}{ms(max(xs))}")
            print(f"logins per second: {len(logins) / (a.seconds + 1):.1f}")

            cases = {"unknown user": ("nobody", "fgk_" + "0" * 64),
                     "wrong key": ("admin", "fgk_" + "1" * 64),
                     "disabled user": ("carol", carol_key)}
            times = {k: [] for k in cases}
            bodies = {k: set() for k in cases}
            for i in range(a.samples):
                for k, (user, key) in cases.items():  # interleaved, so drift hits all alike
                    status, payload, took = request(addr, "POST", "/api/Auth/Token",
                                                    {"userName": user, "apiKey": key})
                    assert status == 401, (k, status)
                    times[k].append(took)
                    bodies[k].add(payload)
            print(f"\nFailed logins: {a.samples} interleaved samples each")
            print(f"{'case':<16}{'median ms':>10}{'p10 ms':>9}{'p90 ms':>9}{'stdev ms':>10}")
            for k, xs in times.items():
                print(f"{k:<16}{ms(statistics.median(xs)):>10}{ms(pct(xs, .1))}{ms(pct(xs, .9))}{ms(statistics.stdev(xs)):>10}")
            same = len(set().union(*bodies.values())) == 1
            print(f"identical answer bodies: {same}")
        finally:
            stop(p)


if __name__ == "__main__":
    main()
