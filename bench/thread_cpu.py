#!/usr/bin/env python3
"""CPU by thread name of a running process over a window: the write path's profile
without perf. Reads /proc/PID/task/*/stat (utime+stime, clock ticks) at the start and
the end of the window, sums by thread name (numbers stripped: sled-io-1 and sled-io-2
are one row), prints a table of CPU seconds and shares.

    bench/thread_cpu.py PID SECONDS
"""
import os
import re
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def main():
    pid, secs = int(sys.argv[1]), float(sys.argv[2])
    a = sample(pid)
    time.sleep(secs)
    b = sample(pid)
    by = {}
    for tid, (name, t) in b.items():
        base = a.get(tid, (name, 0))[1]
        key = re.sub(r"[-_ ]?\d+$", "", name) or name
        by[key] = by.get(key, 0) + (t - base)
    total = sum(by.values()) or 1
    print(f"| thread | CPU s over {secs:g} s | share |")
    print("|---|---|---|")
    for k, v in sorted(by.items(), key=lambda kv: -kv[1]):
        if v:
            print(f"| {k} | {v / TICK:.2f} | {100 * v / total:.0f} % |")
    print(f"| all | {total / TICK:.2f} | 100 % |")


if __name__ == "__main__":
    main()
