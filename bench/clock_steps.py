#!/usr/bin/env python3
# Steps the wall clock of a running fleetgroups server with libfaketime (Debian package
# `faketime`) and prints what the limits do (issue 11, item 7; figures for docs/design/decisions.md,
# not a test; tests/it/clock.rs pins the same behaviour):
#   1. rate limit (5 a minute) and failed-login lockout (10 a minute) reached, then the
#      clock stepped back 10 years: the Retry-After each answers.
#   2. the same, with the clock stepped forward 10 years: still refused?
#   3. daily limit 5, clock at 23:59:50 UTC: requests until refused; step to 00:00:10
#      the next day, the same; step back to 23:59:55 the first day, the same. The total
#      admitted across the three is what one real day allowed.
# libfaketime fakes CLOCK_MONOTONIC too unless FAKETIME_DONT_FAKE_MONOTONIC=1; a real
# clock step (NTP, RTC-less boot) never moves the monotonic clock, so it is set here.
# It starts the binary itself (default target/release/fleetgroups) on 127.0.0.1 with a
# temporary data directory and stops it at the end: loopback only, bounded in time.
#
# usage: bench/clock_steps.py [--bin PATH]

import argparse
import datetime
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TEN_YEARS = "3650d"


def start(binary, data, clock_file, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGROUPS_")}
    env.update(env_extra)
    env.update({
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": clock_file,
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    })
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


def request(addr, method, path, body=None, token=None):
    c = http.client.HTTPConnection(*addr, timeout=60)
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    payload = r.read()
    c.close()
    return r.status, r.getheader("Retry-After"), payload


def set_clock(path, spec):
    with open(path + ".tmp", "w") as f:
        f.write(spec + "\n")
    os.replace(path + ".tmp", path)


def offset_for(utc):
    """A relative libfaketime offset that puts the clock at `utc` now."""
    now = datetime.datetime.now(datetime.timezone.utc)
    secs = int((utc - now).total_seconds())
    return f"{secs:+d}"


def run(binary, tmp, name, env, clock, body):
    data = os.path.join(tmp, name)
    clock_file = os.path.join(tmp, name + ".rc")
    set_clock(clock_file, clock)
    p, addr = start(binary, data, clock_file, env)
    try:
        with open(os.path.join(data, "initial-api-key")) as f:
            key = f.read().strip()
        body(addr, key, clock_file)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def token(addr, key):
    status, _, payload = request(addr, "POST", "/api/Auth/Token",
                                 {"userName": "admin", "apiKey": key})
    assert status == 200, payload
    return json.loads(payload)["token"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/fleetgroups")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)  # the server starts in another directory
    if not os.path.exists(LIBFAKETIME):
        sys.exit(f"{LIBFAKETIME} missing: apt-get install -y faketime")
    with tempfile.TemporaryDirectory() as tmp:
        for step in ("-" + TEN_YEARS, "+" + TEN_YEARS):
            def limits(addr, key, clock_file, step=step):
                t = token(addr, key)
                answers = [request(addr, "GET", "/api/groups", token=t) for _ in range(6)]
                assert answers[-1][0] == 429, answers[-1]
                for _ in range(10):
                    request(addr, "POST", "/api/Auth/Token",
                            {"userName": "admin", "apiKey": "fgk_wrong"})
                locked = request(addr, "POST", "/api/Auth/Token",
                                 {"userName": "admin", "apiKey": key})
                set_clock(clock_file, step)
                rate = request(addr, "GET", "/api/groups", token=t)
                login = request(addr, "POST", "/api/Auth/Token",
                                {"userName": "admin", "apiKey": key})
                print(f"clock {step[0]}10 years: rate limit before the step "
                      f"{answers[-1][0]} Retry-After {answers[-1][1]}, after {rate[0]} "
                      f"Retry-After {rate[1]}; login lockout before {locked[0]} Retry-After "
                      f"{locked[1]}, after {login[0]} Retry-After {login[1]}")
            run(args.bin, tmp, "limits" + step[0],
                {"FLEETGROUPS_LIMITS_REQUESTS_PER_MINUTE": "5"}, "+0", limits)

        today = datetime.datetime.now(datetime.timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0)
        before_midnight = today + datetime.timedelta(days=1, seconds=-10)
        after_midnight = today + datetime.timedelta(days=1, seconds=10)
        back = today + datetime.timedelta(days=1, seconds=-5)

        def daily(addr, key, clock_file):
            t = token(addr, key)
            admitted = []
            for at in (None, after_midnight, back):
                if at is not None:
                    set_clock(clock_file, offset_for(at))
                n = 0
                while n < 20:
                    status, _, _ = request(addr, "GET", "/api/groups", token=t)
                    if status != 200:
                        break
                    n += 1
                admitted.append(n)
            print(f"daily limit 5 across midnight: admitted {admitted[0]} before 00:00, "
                  f"{admitted[1]} after a step to 00:00:10, {admitted[2]} after a step back "
                  f"to 23:59:55: {sum(admitted)} in one real day")
        run(args.bin, tmp, "daily", {"FLEETGROUPS_LIMITS_DAILY_LIMIT": "5"},
            offset_for(before_midnight), daily)


if __name__ == "__main__":
    main()
