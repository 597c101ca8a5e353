#!/usr/bin/env python3
"""Helpers for bench/run.sh, the fleetgroups benchmark: everything that is
awkward in bash. Standard library only; every request goes to 127.0.0.1.

Subcommands:
  freeport                          print a free TCP port on 127.0.0.1
  wait-ready URL TIMEOUT [PID]      poll URL/readyz every 10 ms until it answers
                                    200; print the wall-clock time (epoch seconds)
                                    of that answer; fail if PID exits first
  token URL USER KEY                exchange an API key for a bearer token; print it
  probe URL METHOD PATH TOKEN [BODY]  one request; print "<status> <body bytes>"
  seed URL TOKEN COUNT PREFIX IDS [THREADS]
                                    create COUNT groups (10 devices each) over
                                    keep-alive connections; write their IDs, one
                                    per line, to IDS; print the rate to stderr
  tokens-bg URL USER KEY RATE SECONDS OUT
                                    run RATE token exchanges per second for
                                    SECONDS (each on a new connection, like curl);
                                    write "sent=.. ok=.. fail=.. rate=.." to OUT
  rss PID [VmHWM|VmRSS]             print the field of /proc/PID/status in KiB
  stalled-readers URL TOKEN N PID SAMPLES
                                    open N connections that send an unpaged
                                    GET /api/groups and never read; then time
                                    SAMPLES GET one group requests on a fresh
                                    connection each; print "peak_rss_kb=..
                                    get_p50_us=.. get_max_us=.."
  churn URL TOKEN DEVICES SECONDS DATADIR
                                    one group of DEVICES devices, then toggle one
                                    device (add, remove) for SECONDS; print
                                    "changes=.. grew_bytes=.. bytes_per_change=..
                                    final_bytes=.." (du of DATADIR before/after)
  run-measured LOG CMD [ARGS...]    run CMD (stdout and stderr appended to LOG); print
                                    "seconds=.. peak_rss_kb=.. rc=.." (wall-clock
                                    time; the child's own peak RSS, from wait4)
  gen-backup SMALL COUNT OUT        write the backup OUT: SMALL (a backup of a fresh
                                    store by the binary under test, for its header,
                                    users and sequences) plus COUNT generated groups
                                    of 10 devices shaped like the seeded ones
  pb-setup URL EMAIL PASSWORD COUNT  wait for a PocketBase, create the collection
                                    `groups` (name unique, description, devices;
                                    public list/view/create/update rules, like a token-
                                    less client) and COUNT records shaped like the
                                    seeded groups; print one record's id
  report RESULTS OUT_MD             turn the results file into the table
"""

import http.client
import inspect
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse


def die(msg):
    print(f"helper: {msg}", file=sys.stderr)
    sys.exit(1)


def hostport(url):
    u = urllib.parse.urlsplit(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        die(f"refusing a non-loopback target: {url}")
    return u.hostname, u.port


def conn(url, timeout=30):
    host, port = hostport(url)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def request(c, method, path, token=None, body=None):
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    return r.status, r.read()


# ---------------------------------------------------------------- commands


def cmd_freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def cmd_wait_ready(url, timeout, pid=None):
    host, port = hostport(url)
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if pid and not alive(int(pid)):
            die(f"server (pid {pid}) exited before it was ready")
        try:
            c = http.client.HTTPConnection(host, port, timeout=1)
            c.request("GET", "/readyz")
            status = c.getresponse().status
            c.close()
            if status == 200:
                print(f"{time.time():.6f}")
                return
        except OSError:
            pass
        time.sleep(0.01)
    die(f"{url}/readyz not 200 within {timeout} s")


def cmd_token(url, user, key):
    status, body = request(conn(url), "POST", "/api/Auth/Token",
                           body={"userName": user, "apiKey": key})
    if status != 200:
        die(f"token exchange answered {status}: {body[:200]!r}")
    print(json.loads(body)["token"])


def cmd_probe(url, method, path, token, body=None):
    status, data = request(conn(url), method, path, token,
                           body.encode() if body is not None else None)
    if not 200 <= status < 300:
        die(f"{method} {path} answered {status}: {data[:200]!r}")
    print(status, len(data))


def group_body(prefix, i):
    return {
        "name": f"seed-{prefix}-{i}",
        "description": f"Benchmark group {i}",
        "devices": [f"dev-{prefix}-{i}-{k}" for k in range(10)],
    }


def cmd_seed(url, token, count, prefix, ids_path, threads=16):
    count, threads = int(count), int(threads)
    ids = [None] * count
    numbers = itertools.count()  # next() is atomic under the GIL
    errors = []
    done = [0]
    lock = threading.Lock()

    def worker():
        c = conn(url)
        while not errors:
            i = next(numbers)
            if i >= count:
                break
            for attempt in range(3):
                try:
                    status, data = request(c, "POST", "/api/groups", token,
                                           group_body(prefix, i))
                    break
                except (OSError, http.client.HTTPException):
                    c.close()
                    c = conn(url)
                    if attempt == 2:
                        raise
            if status != 201:
                errors.append(f"POST /api/groups answered {status}: {data[:200]!r}")
                break
            ids[i] = json.loads(data)["id"]
            with lock:
                done[0] += 1
                if done[0] % 10000 == 0:
                    print(f"  seeded {done[0]}/{count}", file=sys.stderr)
        c.close()

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        die(errors[0])
    secs = time.monotonic() - t0
    with open(ids_path, "w") as f:
        f.write("\n".join(ids) + "\n")
    print(f"  seeded {count} groups in {secs:.1f} s ({count / secs:.0f}/s)",
          file=sys.stderr)


def cmd_tokens_bg(url, user, key, rate, seconds, out):
    rate, seconds = float(rate), float(seconds)
    body = json.dumps({"userName": user, "apiKey": key}).encode()
    stats = {"sent": 0, "ok": 0, "fail": 0, "skipped": 0}
    lock = threading.Lock()
    inflight = threading.BoundedSemaphore(64)

    def one():
        try:
            c = conn(url, timeout=10)
            status, _ = request(c, "POST", "/api/Auth/Token", body=body)
            c.close()
            ok = status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        with lock:
            stats["ok" if ok else "fail"] += 1
        inflight.release()

    t0 = time.monotonic()
    n = 0
    while True:
        due = t0 + n / rate
        if due - t0 >= seconds:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        n += 1
        if not inflight.acquire(blocking=False):
            stats["skipped"] += 1
            continue
        stats["sent"] += 1
        threading.Thread(target=one, daemon=True).start()
    elapsed = time.monotonic() - t0
    for _ in range(64):  # wait for the stragglers, at most 10 s
        if not inflight.acquire(timeout=10):
            break
    with open(out, "w") as f:
        f.write(f"sent={stats['sent']} ok={stats['ok']} fail={stats['fail']} "
                f"skipped={stats['skipped']} rate={stats['ok'] / elapsed:.1f}\n")


def cmd_pb_setup(url, email, password, count):
    deadline = time.time() + 30
    while True:
        try:
            c = conn(url, 2)
            if request(c, "GET", "/api/health")[0] == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            die(f"PocketBase at {url} did not answer /api/health")
        time.sleep(0.05)
    c = conn(url)
    st, body = request(c, "POST", "/api/collections/_superusers/auth-with-password",
                       body={"identity": email, "password": password})
    if st != 200:
        die(f"PocketBase superuser login: {st} {body[:200]!r}")
    token = json.loads(body)["token"]
    collection = {
        "name": "groups", "type": "base", "listRule": "", "viewRule": "", "createRule": "",
        "updateRule": "",
        "fields": [{"name": "name", "type": "text", "required": True},
                   {"name": "description", "type": "text"},
                   {"name": "devices", "type": "json"}],
        "indexes": ["CREATE UNIQUE INDEX idx_groups_name ON groups (name)"],
    }
    c.request("POST", "/api/collections", body=json.dumps(collection).encode(),
              headers={"Authorization": token, "Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        die(f"PocketBase collection: {r.status} {r.read()[:300]!r}")
    r.read()
    first = None
    for i in range(int(count)):
        st, body = request(c, "POST", "/api/collections/groups/records",
                           body=group_body("pb", i))
        if st != 200:
            die(f"PocketBase record: {st} {body[:200]!r}")
        first = first or json.loads(body)["id"]
    print(first)


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def cmd_stalled_readers(url, token, n, pid, samples):
    host, port = hostport(url)
    raw = (f"GET /api/groups HTTP/1.1\r\nHost: bench\r\n"
           f"Authorization: Bearer {token}\r\n\r\n").encode()
    held = []
    for _ in range(int(n)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, port))
        s.sendall(raw)
        held.append(s)
    time.sleep(2)  # the readers' answers start and stall: the load, not a sync
    waits = []
    for _ in range(int(samples)):
        c = conn(url)
        t = time.monotonic()
        st, _ = request(c, "GET", "/api/groups/grp-1", token)
        waits.append((time.monotonic() - t) * 1e6)
        c.close()
        if st != 200:
            die(f"GET one answered {st} beside the stalled readers")
    peak = 0
    with open(f"/proc/{int(pid)}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    for s in held:
        s.close()
    print(f"peak_rss_kb={peak} get_p50_us={statistics.median(waits):.0f} "
          f"get_max_us={max(waits):.0f}")


def cmd_churn(url, token, devices, seconds, datadir):
    devices, seconds = int(devices), float(seconds)
    c = conn(url)
    st, body = request(c, "POST", "/api/groups", token, {
        "name": f"churn-{time.time_ns()}",
        "devices": [f"churn-dev-{i:06}" for i in range(devices)],
    })
    if st != 201:
        die(f"churn create: {st} {body[:200]!r}")
    gid = json.loads(body)["id"]
    time.sleep(1.5)  # let the store settle its own flush before the first size
    before = dir_bytes(datadir)
    changes, t_end = 0, time.monotonic() + seconds
    while time.monotonic() < t_end:
        st, body = request(c, "POST", f"/api/groups/{gid}/devices", token,
                           {"devices": ["churn-toggle"]})
        st2, body2 = request(c, "DELETE", f"/api/groups/{gid}/devices/churn-toggle", token)
        if st != 200 or st2 != 200:
            die(f"churn toggle: {st} {st2} {body[:100]!r} {body2[:100]!r}")
        changes += 2
    time.sleep(1.5)
    after = dir_bytes(datadir)
    grew = after - before
    print(f"changes={changes} grew_bytes={grew} bytes_per_change={grew / max(changes, 1):.0f} "
          f"final_bytes={after}")


def cmd_run_measured(log, *cmd):
    if not cmd:
        die("run-measured: no command")
    with open(log, "ab") as out:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    # ru_maxrss is in KiB on Linux, and covers this child alone.
    print(f"seconds={secs:.3f} peak_rss_kb={usage.ru_maxrss} rc={p.returncode}")


def cmd_gen_backup(small, count, out):
    """A backup of COUNT groups without COUNT HTTP posts: the header, users and usage
    counters of SMALL (written by the binary under test, so its format version is
    the right one), a sequences record past the new groups, the groups, the end line.
    Groups are what `seed` makes: same names, descriptions and 10 devices."""
    count = int(count)
    with open(small) as f:
        lines = f.read().splitlines()
    header, body = lines[0], [json.loads(x) for x in lines[1:]]
    if not body or body[-1].get("type") != "end":
        die(f"{small}: no end line")
    kept, seq, account = [], None, None
    for rec in body[:-1]:
        t = rec.get("type")
        if t == "sequences":
            seq = rec
        elif t in ("group", "change", "idempotency"):
            die(f"{small}: expected a fresh store, found a {t} record")
        else:
            if t == "user" and account is None:
                account = rec["account"]
            kept.append(rec)
    if seq is None or account is None:
        die(f"{small}: no sequences record or no user")
    seq["nextGroup"] = max(int(seq["nextGroup"]), count + 1)
    now = int(time.time() * 1000)
    acc = json.dumps(account)
    t0 = time.monotonic()
    with open(out, "w", buffering=1 << 20) as f:
        f.write(header + "\n")
        f.write(json.dumps(seq, separators=(",", ":")) + "\n")
        for rec in kept:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        for i in range(count):
            devs = ",".join(f'"dev-gen-{i}-{k}"' for k in range(10))
            f.write(f'{{"type":"group","account":{acc},"id":{i + 1},"revision":1,'
                    f'"creation":{now},"lastModified":{now},"name":"seed-gen-{i}",'
                    f'"description":"Benchmark group {i}","devices":[{devs}]}}\n')
        f.write(json.dumps({"type": "end", "records": 1 + len(kept) + count},
                           separators=(",", ":")) + "\n")
    print(f"  generated {count} groups in {time.monotonic() - t0:.1f} s", file=sys.stderr)


def cmd_rss(pid, field="VmHWM"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                print(line.split()[1])
                return
    die(f"no {field} in /proc/{pid}/status")


# ---------------------------------------------------------------- report

# scenario key -> (label, kind, target)
SCENARIOS = [
    ("ceiling", "ceiling vs. a 2nd ceiling (noise check)", "ratio", None),
    ("get_one", "GET one group", "ratio", 0.5),
    ("list_100", "GET list of 100 groups", "ratio", 0.2),
    ("post", "POST create (fsync)", "ratio", 0.25),
    ("put", "PUT update (fsync)", "ratio", 0.2),
    ("mix", "90/10 GET/PUT mix", "ratio", 0.4),
    ("token", "token exchange (argon2)", "ratio", None),
    ("get_tokens", "GET one + 20 token/s", "p99x", 2.0),
    ("get_post", "GET one (paced) beside POST at full rate", "p99x", 2.0),
]


def parse_kv(s):
    out = {}
    for part in s.split():
        k, _, v = part.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def load(path):
    res = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            scen, key, value = line.split("\t", 2)
            res.setdefault(scen, {}).setdefault(key, []).append(value)
    return res


def ms(us):
    return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.0f} ms"


def mib(kb_or_bytes, unit_kb=True):
    v = float(kb_or_bytes) / (1024 if unit_kb else 1024 * 1024)
    return f"{v:.1f}"


def rps_cell(runs):
    r = [x["rps"] for x in runs]
    med = statistics.median(r)
    if len(r) == 1:
        return med, f"{med:,.0f}"
    return med, f"{med:,.0f} ({min(r):,.0f}–{max(r):,.0f})"


def cpu_cell(runs):
    """The server's CPU per request (utime + stime over the run ÷ its requests): the
    median over the runs that measured it, in µs, or "–"."""
    per = [x["cpu_us"] / x["requests"] for x in runs if "cpu_us" in x and x["requests"]]
    if not per:
        return "–"
    med = statistics.median(per)
    if len(per) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({min(per):,.0f}–{max(per):,.0f})"


def verdict(ok):
    return "PASS" if ok else "FAIL"


def cmd_report(results_path, out_path):
    res = load(results_path)
    meta = res.get("meta", {})
    header = ["Scenario", "req/s median (min–max)", "p50", "p99",
              "server CPU µs/req (min–max)", "ceiling req/s", "ratio", "peak RSS MiB",
              "errors", "measured", "target", "result"]
    rows = []
    notes = []
    shown = {"meta"}
    peak = []  # (kib, scenario)

    for key, label, kind, target in SCENARIOS:
        d = res.get(key)
        if not d:
            continue
        shown.add(key)
        if "failed" in d:
            tgt = "" if target is None else (
                f"≥ {target}× ceiling" if kind == "ratio" else f"≤ {target}× p99")
            rows.append([label] + ["–"] * 8 + [d["failed"][0], tgt, "FAIL"])
            continue
        runs = [parse_kv(x) for x in d.get("server_run", [])]
        ceil = [parse_kv(x) for x in d.get("ceiling_run", [])]
        if not runs:
            continue
        med, cell = rps_cell(runs)
        p50 = statistics.median(x["p50_us"] for x in runs)
        p99 = statistics.median(x["p99_us"] for x in runs)
        # Every run of the scenario counts for errors, the baseline and background
        # runs too.
        every = runs + [parse_kv(x) for k in ("base_run", "post_bg") for x in d.get(k, [])]
        errs = sum(int(x["non2xx"] + x["sockerr"]) for x in every)
        reqs = sum(int(x["requests"]) for x in every)
        row = [label, cell, ms(p50), ms(p99), cpu_cell(runs)]
        ratio = None
        if ceil:
            cmed = statistics.median(x["rps"] for x in ceil)
            ratio = med / cmed if cmed else 0.0
            body = d.get("body_bytes", ["?"])[0]
            row += [f"{cmed:,.0f} ({body} B)", f"{ratio:.2f}"]
        else:
            row += ["–", "–"]
        if "peak_rss_kb" in d:
            kib = float(d["peak_rss_kb"][0])
            if key != "ceiling":  # that one is the ceiling's own RSS
                peak.append((kib, label))
            row.append(mib(kib))
        else:
            row.append("–")
        row.append(f"{errs} / {reqs:,}" if errs else "0")
        if kind == "ratio":
            measured = f"{ratio:.2f}× ceiling" if ratio is not None else "–"
            tgt = f"≥ {target}× ceiling" if target else "(info)"
            ok = None if target is None or ratio is None else ratio >= target
        else:  # p99x: GET p99 with tokens vs without
            base = [parse_kv(x) for x in d.get("base_run", [])]
            bp99 = statistics.median(x["p99_us"] for x in base) if base else 0
            x = p99 / bp99 if bp99 else float("inf")
            measured = f"p99 {ms(bp99)} → {ms(p99)} = {x:.2f}×"
            tgt = f"≤ {target}× p99"
            ok = x <= target
            if "tokens_bg" in d:
                notes.append(f"{label}: background token exchanges per repeat: "
                             + "; ".join(d["tokens_bg"]))
            if "post_bg" in d:
                bg = [parse_kv(x) for x in d["post_bg"]]
                _, bcell = rps_cell(bg)
                berrs = sum(int(x["non2xx"] + x["sockerr"]) for x in bg)
                paced = parse_kv(d.get("paced", [""])[0])
                notes.append(
                    f"{label}: the GETs are paced ({int(paced.get('connections', 0))} "
                    f"connections, each pausing {int(paced.get('pause_ms', 0))} ms before a "
                    f"request); the creates beside them ran at {bcell} req/s "
                    f"(p99 {ms(statistics.median(x['p99_us'] for x in bg))}, "
                    f"{berrs} errors); server CPU over each create run ÷ its creates "
                    f"(the paced GETs' share included): {cpu_cell(bg)} µs.")
        if errs:
            result = "ERR"
            notes.append(f"{label}: {errs} of {reqs} requests failed (non-2xx or socket "
                         "errors); its figures are not valid.")
        else:
            result = "" if ok is None else verdict(ok)
        rows.append(row + [measured, tgt, result])

    def extra(label, measured, target, ok, rss="–"):
        rows.append([label, "–", "–", "–", "–", "–", "–", rss, "–", measured, target,
                     "" if ok is None else verdict(ok)])

    pr = res.get("peers", {})
    if pr:
        shown.add("peers")
        if "failed" in pr:
            extra("vs PocketBase", pr["failed"][0], "≥ 5× PocketBase", False)
        for what, ours_key, peer_key in [("GET one", "server_get", "peer_get"),
                                         ("create", "server_post", "peer_post"),
                                         ("update (PUT; PocketBase PATCH)", "server_put",
                                          "peer_put")]:
            ours = [parse_kv(x) for x in pr.get(ours_key, [])]
            peer = [parse_kv(x) for x in pr.get(peer_key, [])]
            if not ours or not peer:
                continue
            om, ocell = rps_cell(ours)
            pm, pcell = rps_cell(peer)
            x = om / pm if pm else float("inf")
            errs = sum(int(r["non2xx"] + r["sockerr"]) for r in ours + peer)
            rows.append([f"vs {pr.get('peer_version', ['PocketBase'])[0]}: {what}", ocell,
                         ms(statistics.median(r["p50_us"] for r in ours)),
                         ms(statistics.median(r["p99_us"] for r in ours)),
                         f"{cpu_cell(ours)}; PocketBase {cpu_cell(peer)}",
                         f"PocketBase {pcell}", f"{x:.2f}",
                         mib(pr["peak_rss_kb"][0]) if "peak_rss_kb" in pr else "–",
                         f"{errs}" if errs else "0",
                         f"{x:.1f}× PocketBase", "≥ 5× PocketBase",
                         "ERR" if errs else verdict(x >= 5.0)])
        if "peer_rss_kb" in pr:
            notes.append(f"PocketBase peak RSS in the peers scenario: {mib(pr['peer_rss_kb'][0])} MiB.")
        notes.append("peers: fleetgroups fsyncs every acknowledged create (group commit); "
                     "PocketBase 0.40 keeps SQLite in WAL mode with synchronous=NORMAL, which "
                     "does not fsync each commit. Same wrk settings, one after the other, "
                     "PocketBase without auth (public rules), fleetgroups with a bearer token. "
                     "The update rows alternate two bodies on one record (put.lua): PUT to "
                     "fleetgroups, PATCH (PocketBase's update) to PocketBase.")

    st = res.get("stream", {})
    if st:
        shown.add("stream")
        if "failed" in st:
            extra("16 stalled unpaged list readers", st["failed"][0], "RSS ≤ 64 MiB, GET one < 5 ms", False)
        elif "readers" in st:
            r = parse_kv(st["readers"][0])
            n = int(float(st.get("seeded", ["0"])[0]))
            ok = r["peak_rss_kb"] <= 64 * 1024 and r["get_max_us"] < 5000
            extra(f"16 stalled readers of an unpaged list of {n:,} groups",
                  f"peak RSS {mib(r['peak_rss_kb'])} MiB; GET one p50 {ms(r['get_p50_us'])}, max {ms(r['get_max_us'])}",
                  "RSS ≤ 64 MiB, GET one < 5 ms", ok, mib(r["peak_rss_kb"]))
            peak.append((r["peak_rss_kb"], f"{n:,} groups and 16 stalled list readers"))
    ch = res.get("churn", {})
    if ch:
        shown.add("churn")
        if "failed" in ch:
            extra("churn: one device on a 10,000-device group", ch["failed"][0], "≤ 1 KiB per change", False)
        elif "churn" in ch:
            r = parse_kv(ch["churn"][0])
            extra("churn: one device toggled on a 10,000-device group",
                  f"{r['bytes_per_change']:.0f} B per change over {int(r['changes'])} changes; store {mib(r['final_bytes'], False)} MiB after",
                  "≤ 1 KiB per change", r["bytes_per_change"] <= 1024)

    s = res.get("startup", {})
    shown.add("startup")
    if "failed" in s:
        extra("startup with the seeded groups", s["failed"][0], "≤ 1 s", False)
    elif "ready_s" in s:
        n = int(float(s["seeded"][0]))
        t = float(s["ready_s"][0])
        extra(f"{n:,} groups: exec → /readyz 200", f"{t:.2f} s", "≤ 1 s", t <= 1.0,
              mib(s["restart_rss_kb"][0]) if "restart_rss_kb" in s else "–")
        dd = float(s["datadir_bytes"][0])
        if "backup_bytes" in s:
            bb = float(s["backup_bytes"][0])
            x = dd / bb if bb else float("inf")
            extra(f"{n:,} groups: data dir size",
                  f"{mib(dd, False)} MiB = {x:.1f}× backup ({mib(bb, False)} MiB)",
                  "≤ 2× backup", x <= 2.0)
        else:
            extra(f"{n:,} groups: data dir size", f"{mib(dd, False)} MiB; backup n/a",
                  "≤ 2× backup", None)
            rows[-1][-1] = "n/a"
        if "seed_rate" in s:
            notes.append(f"Seeding {n:,} groups: {s['seed_rate'][0]}.")
        if "peak_rss_kb" in s:
            peak.append((float(s["peak_rss_kb"][0]), f"seeding {n:,} groups"))
        notes.append("The RSS on the startup row is VmRSS right after /readyz "
                     "answered 200 on the restart with the seeded data.")
    rs = res.get("restore", {})
    if rs:
        shown.add("restore")
        if "failed" in rs:
            extra("restore into an empty data dir", rs["failed"][0], "≤ 5 s", False)
        elif "restore" in rs:
            r = parse_kv(rs["restore"][0])
            n = int(float(rs["groups"][0]))
            extra(f"restore of {n:,} groups (backup {mib(rs['backup_bytes'][0], False)} MiB)",
                  f"{r['seconds']:.2f} s; restore process peak RSS {mib(r['peak_rss_kb'])} MiB; "
                  f"data dir {mib(rs['datadir_bytes'][0], False)} MiB",
                  "≤ 5 s", r["seconds"] <= 5.0, mib(r["peak_rss_kb"]))
            notes.append("The restore row's RSS is the `fleetgroups restore` process's own peak "
                         "(wait4), not a server's; it is not in the server peak below.")
    rm = res.get("ready_1m", {})
    if rm:
        shown.add("ready_1m")
        if "failed" in rm:
            extra("1,000,000 groups: exec → /readyz 200", rm["failed"][0], "≤ 5 s", False)
        elif "ready_s" in rm:
            n = int(float(rm["groups"][0]))
            t = float(rm["ready_s"][0])
            extra(f"{n:,} groups (ready_1m, restored): exec → /readyz 200", f"{t:.2f} s",
                  "≤ 5 s", t <= 5.0, mib(rm["ready_rss_kb"][0]))
            if "peak_rss_kb" in rm:
                peak.append((float(rm["peak_rss_kb"][0]), f"{n:,} groups at ready"))
            if "restore" in rm:
                r = parse_kv(rm["restore"][0])
                notes.append(f"ready_1m: its store was built by restoring a generated backup of "
                             f"{n:,} groups ({mib(rm['backup_bytes'][0], False)} MiB): "
                             f"{r['seconds']:.1f} s, restore peak RSS {mib(r['peak_rss_kb'])} MiB; "
                             f"data dir {mib(rm['datadir_bytes'][0], False)} MiB. Its RSS cell "
                             "is VmRSS right after /readyz answered 200.")
    i = res.get("idle", {})
    if "idle_rss_kb" in i:
        shown.add("idle")
        kib = float(i["idle_rss_kb"][0])
        extra("idle RSS (fresh start, no load)", f"{mib(kib)} MiB", "≤ 10 MiB",
              kib <= 10 * 1024, mib(kib))
    if peak:
        kib, where = max(peak)
        extra("peak RSS (max over scenarios)", f"{mib(kib)} MiB ({where})", "≤ 64 MiB",
              kib <= 64 * 1024)
    b = res.get("binary", {})
    if "binary_bytes" in b:
        shown.add("binary")
        v = float(b["binary_bytes"][0])
        extra("release binary size", f"{mib(v, False)} MiB", "≤ 15 MiB",
              v <= 15 * 1024 * 1024)
    for scen, d in res.items():
        if scen not in shown and "failed" in d:
            extra(scen, d["failed"][0], "", False)
        for n in d.get("note", []):
            notes.append(f"{scen}: {n}")

    lines = ["# fleetgroups benchmark — latest run", ""]
    for k in ("date", "commit", "server", "machine", "load", "settings"):
        if k in meta:
            lines.append(f"- {k}: {meta[k][0]}")
    lines += ["", "| " + " | ".join(header) + " |",
              "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes.append("server CPU µs/req: the server process's user + system CPU time (all "
                 "threads; utime + stime from /proc/PID/stat, as getrusage counts it) over "
                 "each run, divided by that run's requests; median (min–max) over the "
                 "repeats. For the mix it is per request, of which 10 % are writes. It "
                 "depends less on the machine's noise than req/s does.")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    with open(out_path, "w") as f:
        f.write(text)
    print(text)


COMMANDS = {
    "freeport": cmd_freeport,
    "wait-ready": cmd_wait_ready,
    "token": cmd_token,
    "probe": cmd_probe,
    "seed": cmd_seed,
    "tokens-bg": cmd_tokens_bg,
    "rss": cmd_rss,
    "run-measured": cmd_run_measured,
    "gen-backup": cmd_gen_backup,
    "pb-setup": cmd_pb_setup,
    "stalled-readers": cmd_stalled_readers,
    "churn": cmd_churn,
    "report": cmd_report,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    fn = COMMANDS[sys.argv[1]]
    try:
        inspect.signature(fn).bind(*sys.argv[2:])
    except TypeError as e:
        die(f"bad arguments for {sys.argv[1]}: {e}")
    fn(*sys.argv[2:])
