#!/usr/bin/env python3
# Measures how much memory failed logins can make a real fleetgroups server keep (issue
# 11, item 1; figures for docs/design/decisions.md, not a test). For --seconds, --threads clients send
# POST /api/Auth/Token with a new ~900 KB userName each and a wrong key, every request
# from its own 127.x.y.z source address (--addresses rotate) or all from 127.0.0.1
# (--addresses single). The server's RSS (/proc/<pid>/status VmRSS) is sampled once a
# second and printed as a table with the answers seen.
# It starts the binary itself (default target/release/fleetgroups) on 127.0.0.1 with a
# temporary data directory and stops it at the end: loopback only, bounded in time.
#
# usage: bench/login_flood_rss.py [--bin PATH] [--seconds 20] [--threads 8]
#                                   [--name-kb 900] [--addresses rotate|single]

import argparse
import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter


def start(binary, data):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")}
    os.makedirs(os.path.dirname(data), exist_ok=True)
    p = subprocess.Popen(
        [binary, "--data-dir", data, "serve", "--listen", "127.0.0.1:0"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        # Away from the repository's ./config.toml, which the binary would read.
        cwd=os.path.dirname(data))
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


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/fleetgroups")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--name-kb", type=int, default=900)
    ap.add_argument("--addresses", choices=["rotate", "single"], default="rotate")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)  # the server starts in another directory

    with tempfile.TemporaryDirectory() as tmp:
        p, addr = start(args.bin, os.path.join(tmp, "data"))
        answers = Counter()
        lock = threading.Lock()
        counter = itertools.count(1)
        stop_at = time.monotonic() + args.seconds
        filler = "a" * (args.name_kb * 1024)

        def flood():
            while time.monotonic() < stop_at:
                n = next(counter)
                # 127.0.0.0/8 is all loopback on Linux: a new client address per request.
                src = "127.0.0.1" if args.addresses == "single" else \
                    f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255 or 1}"
                body = json.dumps({"userName": f"{filler}{n}", "apiKey": "fgk_wrong"})
                try:
                    c = http.client.HTTPConnection(*addr, timeout=30, source_address=(src, 0))
                    c.request("POST", "/api/Auth/Token", body=body,
                              headers={"Content-Type": "application/json"})
                    status = c.getresponse().status
                    c.close()
                except OSError as e:
                    status = type(e).__name__
                with lock:
                    answers[status] += 1

        before = rss_kb(p.pid)
        threads = [threading.Thread(target=flood, daemon=True) for _ in range(args.threads)]
        for t in threads:
            t.start()
        print(f"{args.addresses} addresses, {args.threads} clients, "
              f"{args.name_kb} KB userNames, {args.seconds:.0f} s")
        print(f"{'t (s)':>6} {'RSS (MB)':>9} {'answers':>8}")
        print(f"{0:>6} {before / 1024:>9.1f} {0:>8}")
        started = time.monotonic()
        peak = before
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            r = rss_kb(p.pid)
            peak = max(peak, r)
            with lock:
                done = sum(answers.values())
            print(f"{time.monotonic() - started:>6.0f} {r / 1024:>9.1f} {done:>8}")
        for t in threads:
            t.join()
        after = rss_kb(p.pid)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        print(f"answers: {dict(answers)}")
        print(f"RSS before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB, "
              f"after {after / 1024:.1f} MB (growth {(after - before) / 1024:+.1f} MB)")


if __name__ == "__main__":
    main()
