#!/usr/bin/env python3
"""Fleet benchmark (README "Many gateways"), driven by bench/fleet.sh: N gateway
processes (release binary) against one PostgreSQL with max_connections = MAXCONN,
directly and through PgBouncer in transaction mode. Each gateway starts from a
restored backup of GROUPS groups; a tenth of them write throughout. Measured per mode:
seconds from the launch until every gateway's central row exists with applied_seq =
its head (the writers' heads read from their own feed), the peak number of central
connections of the gateways' role, a reader role's connect+query latency throughout
(and any refusal), the fleet's RSS and CPU once idle, and after a 60 s stop of
PostgreSQL under writes: how the reconnections spread over time and the catch-up.

Standard library only; psql for SQL. Prints a Markdown table; fleet.sh saves it.
"""

import calendar
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ENV = os.environ
N = int(ENV.get("N", "1000"))
GROUPS = int(ENV.get("GROUPS_EACH", "200"))
MAXCONN = int(ENV.get("MAXCONN", "100"))
# The README's sizing rule: the gateways' role may hold what is left after the
# superuser reserve (3) and the readers' share.
READER_SLOTS = int(ENV.get("READER_SLOTS", "17"))
FLEET_LIMIT = MAXCONN - 3 - READER_SLOTS
POOL = int(ENV.get("POOL", "20"))
WRITE_EVERY = float(ENV.get("WRITE_EVERY", "2"))  # seconds between a writer's writes
OUTAGE = int(ENV.get("OUTAGE", "60"))
IDLE_WINDOW = int(ENV.get("IDLE_WINDOW", "30"))
MODES = ENV.get("MODES", "direct,pgbouncer").split(",")
BIN = sys.argv[1]
WORK = sys.argv[2]
PGBIN = sys.argv[3]
BACKUP = sys.argv[4]
TICK = os.sysconf("SC_CLK_TCK")
# Every process this script starts, ended in main's finally whatever happens.
STARTED = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


PGPORT = free_port()


def psql(sql, user="postgres", port=None, timeout=30):
    r = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port or PGPORT), "-U", user, "-d", "postgres",
         "-Atqc", sql],
        capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    return r.stdout.strip()


def as_postgres(*args):
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pg_start():
    opts = (f"-p {PGPORT} -k {WORK} -c listen_addresses=127.0.0.1 -c max_connections={MAXCONN} "
            f"-c log_connections=on -c log_line_prefix='%m '")
    as_postgres(f"{PGBIN}/pg_ctl", "-D", f"{WORK}/pg", "-l", f"{WORK}/pg.log", "-w", "-t", "120",
                "-o", opts, "start")


def pg_stop():
    as_postgres(f"{PGBIN}/pg_ctl", "-D", f"{WORK}/pg", "-m", "fast", "-w", "stop")


def setup_pg():
    as_postgres(f"{PGBIN}/initdb", "-D", f"{WORK}/pg", "-A", "trust", "-U", "postgres", "-E",
                "UTF8")
    pg_start()
    psql(f"CREATE ROLE fleet LOGIN CONNECTION LIMIT {FLEET_LIMIT};"
         "GRANT CREATE ON DATABASE postgres TO fleet; CREATE ROLE reader LOGIN;")


def start_bouncer():
    port = free_port()
    d = f"{WORK}/bouncer"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/users.txt", "w") as f:
        f.write('"fleet" ""\n"postgres" ""\n')
    with open(f"{d}/pgbouncer.ini", "w") as f:
        f.write(f"[databases]\npostgres = host=127.0.0.1 port={PGPORT} dbname=postgres\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
                f"unix_socket_dir =\nauth_type = trust\nauth_file = {d}/users.txt\n"
                f"pool_mode = transaction\nmax_client_conn = {N + 200}\n"
                f"default_pool_size = {POOL}\nlogfile = {d}/pgbouncer.log\n")
    subprocess.run(["chown", "-R", "postgres", d], check=True)
    bin_ = "/usr/sbin/pgbouncer"
    p = subprocess.Popen(["runuser", "-u", "postgres", "--", "sh", "-c",
                          f"ulimit -n {4 * N + 1024}; exec {bin_} {d}/pgbouncer.ini"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(p)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port, f"{d}/pgbouncer.log"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start")


class Gateway:
    def __init__(self, i, mode):
        self.i = i
        self.id = f"gw-{i:04d}"
        self.dir = f"{WORK}/{mode}/{self.id}"
        self.port = None
        self.proc = None
        self.token = None

    def restore(self):
        subprocess.run([BIN, "--data-dir", self.dir, "restore", BACKUP], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def launch(self, url):
        # Port 0: the server picks a free one and logs it (no race between picking a
        # port here and binding it there).
        self.port = None
        env = dict(ENV)
        env.update({
            "FLEETGROUPS_REPLICATION_POSTGRES_URL": url,
            "FLEETGROUPS_REPLICATION_GATEWAY_ID": self.id,
            "FLEETGROUPS_STORAGE_CACHE_MB": "1",
        })
        out = open(f"{self.dir}.log", "ab")
        self.proc = subprocess.Popen(
            [BIN, "--data-dir", self.dir, "serve", "--listen", "127.0.0.1:0"],
            env=env, stdout=out, stderr=out)
        STARTED.append(self.proc)

    def launch_plain(self):
        """The same server without [replication]."""
        out = open(f"{self.dir}.log", "ab")
        env = dict(ENV)
        env["FLEETGROUPS_STORAGE_CACHE_MB"] = "1"
        self.proc = subprocess.Popen(
            [BIN, "--data-dir", self.dir, "serve", "--listen", "127.0.0.1:0"],
            env=env, stdout=out, stderr=out)
        STARTED.append(self.proc)

    def find_port(self):
        """The port from the server's log line `listening on http://127.0.0.1:PORT`."""
        if self.port is None:
            with open(f"{self.dir}.log", errors="replace") as f:
                for line in f:
                    i = line.find("listening on http://127.0.0.1:")
                    if i >= 0:
                        self.port = int(line[i + 30:].split()[0].rstrip(","))
        return self.port

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.id} exited: see {self.dir}.log")
        if self.find_port() is None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def req(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        r = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                   method=method)
        r.add_header("Content-Type", "application/json")
        if self.token:
            r.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(r, timeout=30) as resp:
            return json.load(resp)

    def login(self, key):
        self.token = self.req("POST", "/api/Auth/Token",
                              {"userName": "admin", "apiKey": key})["token"]

    def head(self):
        after = None
        while True:
            q = "limit=1000" + ("" if after is None else f"&after={after}")
            v = self.req("GET", f"/api/changes?{q}")
            if not v["changes"]:
                return v["next"]
            after = v["next"]

    def stat(self):
        """(utime+stime ticks, VmRSS KiB) of the process."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        ticks = int(parts[11]) + int(parts[12])
        rss = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return ticks, rss


class Sampler(threading.Thread):
    """Every 0.25 s: a reader connects and counts the fleet's central connections."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = False
        self.latencies = []
        self.failures = []
        self.peak = 0
        self.paused = False

    def run(self):
        while not self.stop:
            if not self.paused:
                t = time.monotonic()
                try:
                    n = int(psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'",
                                 user="reader", timeout=20))
                    self.latencies.append((time.monotonic() - t) * 1000)
                    self.peak = max(self.peak, n)
                except Exception as e:  # noqa: BLE001 - any refusal is a finding
                    self.failures.append(str(e)[:200])
            time.sleep(0.25)


class Writers(threading.Thread):
    """Each writer gateway creates a group every WRITE_EVERY seconds (jittered)."""

    def __init__(self, gws):
        super().__init__(daemon=True)
        self.gws = gws
        self.stop = False
        self.count = 0
        self.errors = 0

    def run(self):
        threads = [threading.Thread(target=self.one, args=(g,), daemon=True) for g in self.gws]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def one(self, g):
        n = 0
        time.sleep(random.uniform(0, WRITE_EVERY))
        while not self.stop:
            n += 1
            try:
                g.req("POST", "/api/groups",
                      {"name": f"w-{time.time_ns()}-{n}", "devices": ["w-dev", f"{g.id}-w{n}"]})
                self.count += 1
            except Exception:  # noqa: BLE001
                self.errors += 1
            time.sleep(WRITE_EVERY * random.uniform(0.5, 1.5))


def converged(gws, writers):
    """Whether every gateway has a central row with applied_seq = its head."""
    rows = psql("SELECT count(*) FROM fleetgroups.gateway_status WHERE behind = 0 "
                "AND head_seq IS NOT NULL", timeout=60) if schema_exists() else "0"
    if int(rows or 0) < len(gws):
        return False
    applied = dict(
        line.split("|") for line in psql(
            "SELECT gateway_id, applied_seq FROM fleetgroups.gateways").splitlines())
    return all(int(applied.get(g.id, -1)) >= g.head() for g in writers)


def schema_exists():
    return psql("SELECT to_regclass('fleetgroups.gateway_status') IS NOT NULL") == "t"


def wait_converged(gws, writers, limit=1800):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        if converged(gws, writers):
            return time.monotonic()
        time.sleep(1)
    raise RuntimeError("the fleet did not converge")


def fleet_usage(gws):
    ticks, rss = 0, 0
    for g in gws:
        try:
            t, r = g.stat()
            ticks += t
            rss += r
        except OSError:
            pass
    return ticks, rss


def reconnects(log_path, since, pattern):
    """Seconds after `since` (epoch) of each line matching `pattern` in a log whose lines
    start with a timestamp 'YYYY-MM-DD HH:MM:SS.mmm'."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            if pattern not in line:
                continue
            try:
                ts = calendar.timegm(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                ts += float("0." + line[20:23]) if line[19] == "." else 0
            except ValueError:
                continue
            if ts >= since:
                out.append(ts - since)
    return sorted(out)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run_mode(mode, key):
    log(f"== {mode}: restoring {N} gateways of {GROUPS} groups")
    os.makedirs(f"{WORK}/{mode}", exist_ok=True)
    psql("DROP SCHEMA IF EXISTS fleetgroups CASCADE")
    gws = [Gateway(i, mode) for i in range(N)]
    t = time.monotonic()
    threads = [threading.Thread(target=lambda part=part: [g.restore() for g in part])
               for part in (gws[k::4] for k in range(4))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log(f"   restored in {time.monotonic() - t:.0f} s")
    bouncer = None
    if mode == "pgbouncer":
        bouncer, bport, blog = start_bouncer()
        url = f"postgresql://fleet@127.0.0.1:{bport}/postgres?sslmode=disable"
    else:
        url = f"postgresql://fleet@127.0.0.1:{PGPORT}/postgres?sslmode=disable"
    sampler = Sampler()
    sampler.start()
    pg_log_start = time.time()
    t0 = time.monotonic()
    for g in gws:
        g.launch(url)
    launched = time.monotonic() - t0
    log(f"   launched {N} processes in {launched:.1f} s")
    for g in gws:
        while not g.ready():
            time.sleep(0.05)
    log(f"   all {N} ready {time.monotonic() - t0:.1f} s after the launch began")
    writers = gws[::10]
    for g in writers:
        while not g.ready():
            time.sleep(0.05)
        g.login(key)
    w = Writers(writers)
    w.start()
    time.sleep(float(ENV.get("WRITE_SECONDS", "30")))
    w.stop = True
    w.join()
    t_conv = wait_converged(gws, writers) - t0
    log(f"   converged {t_conv:.1f} s after the launch ({w.count} writes, {w.errors} failed)")
    total_groups = int(psql("SELECT count(*) FROM fleetgroups.groups"))
    peak = sampler.peak
    lat = list(sampler.latencies)
    fails = list(sampler.failures)
    # Idle: connections given back, then the fleet's CPU over IDLE_WINDOW seconds.
    time.sleep(15)
    idle_conns = int(psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'"))
    c0, _ = fleet_usage(gws)
    time.sleep(IDLE_WINDOW)
    c1, rss = fleet_usage(gws)
    idle_cpu = (c1 - c0) / TICK / IDLE_WINDOW * 100  # % of one core
    log(f"   idle: {idle_conns} connections, fleet CPU {idle_cpu:.2f} % of a core, RSS {rss / 1024:.0f} MiB")
    # Outage under writes.
    w = Writers(writers)
    w.start()
    time.sleep(5)
    sampler.paused = True
    pg_stop()
    log(f"   PostgreSQL stopped for {OUTAGE} s under writes")
    time.sleep(OUTAGE)
    t_up_wall = time.time()
    pg_start()
    t_up = time.monotonic()
    sampler.paused = False
    w.stop = True
    w.join()
    t_catch = wait_converged(gws, writers) - t_up
    if mode == "pgbouncer":
        rec = reconnects(blog, t_up_wall, "login attempt: db=postgres user=fleet")
    else:
        rec = reconnects(f"{WORK}/pg.log", t_up_wall, "connection authorized: user=fleet")
    first10 = [x for x in rec if x <= 10]
    per_sec = [sum(1 for x in first10 if int(x) == s) for s in range(10)]
    log(f"   caught up {t_catch:.1f} s after the restart; reconnects in the first 10 s per s: {per_sec}")
    sampler.stop = True
    for g in gws:
        g.proc.send_signal(signal.SIGTERM)
    for g in gws:
        try:
            g.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            g.proc.kill()
    if bouncer:
        bouncer.terminate()
        bouncer.wait()
    return {
        "mode": mode,
        "launch_s": launched,
        "converge_s": t_conv,
        "writes": w.count,
        "groups": total_groups,
        "peak": peak,
        "lat_p50": pct(lat, 50),
        "lat_p99": pct(lat, 99),
        "lat_max": max(lat) if lat else float("nan"),
        "reader_samples": len(lat),
        "reader_fail": len(fails),
        "fail_example": fails[0] if fails else "",
        "idle_conns": idle_conns,
        "idle_cpu": idle_cpu,
        "rss_mib": rss / 1024,
        "rss_each": rss / 1024 / max(1, len(gws)),
        "catch_s": t_catch,
        "rec_first": rec[0] if rec else float("nan"),
        "rec_p50": pct(rec, 50),
        "rec_p90": pct(rec, 90),
        "rec_n": len(rec),
        "rec_peak_s": max(per_sec) if per_sec else 0,
    }


def idle_baseline():
    """Idle CPU and RSS of the same N gateways without [replication] and with it
    (direct, caught up), over IDLE_WINDOW after a settling minute: what replication
    itself costs an idle fleet."""
    out = {}
    for label, url in (("off", None),
                       ("on", f"postgresql://fleet@127.0.0.1:{PGPORT}/postgres?sslmode=disable")):
        log(f"== idle baseline, replication {label}: {N} gateways")
        psql("DROP SCHEMA IF EXISTS fleetgroups CASCADE")
        os.makedirs(f"{WORK}/idle-{label}", exist_ok=True)
        gws = [Gateway(i, f"idle-{label}") for i in range(N)]
        for g in gws:
            g.restore()
        for g in gws:
            g.launch(url) if url else g.launch_plain()
        for g in gws:
            while not g.ready():
                time.sleep(0.05)
        if url:
            wait_converged(gws, [])
        time.sleep(60)
        c0, _ = fleet_usage(gws)
        time.sleep(IDLE_WINDOW)
        c1, rss = fleet_usage(gws)
        out[label] = {"cpu": (c1 - c0) / TICK / IDLE_WINDOW * 100, "rss_mib": rss / 1024}
        log(f"   {out[label]}")
        for g in gws:
            g.proc.terminate()
        for g in gws:
            g.proc.wait()
    return out


def explain_at_scale():
    """The README's three queries on 1,000,000 central groups (1,000 gateways) and
    1,000,000 changes: the plans, each served by an index."""
    log("== EXPLAIN at 1,000,000 groups")
    psql("""DROP SCHEMA IF EXISTS fleetgroups CASCADE""")
    # The gateway creates the schema; one short run of one gateway does it.
    g = Gateway(0, "explain")
    os.makedirs(f"{WORK}/explain", exist_ok=True)
    g.restore()
    g.launch(f"postgresql://fleet@127.0.0.1:{PGPORT}/postgres?sslmode=disable")
    t = time.monotonic()
    while not schema_exists() and time.monotonic() - t < 60:
        time.sleep(0.2)
    g.proc.send_signal(signal.SIGTERM)
    g.proc.wait()
    psql("""INSERT INTO fleetgroups.groups
              SELECT 'site-' || lpad((n % 1000)::text, 3, '0'), 'acct-' || (n % 7), 'grp-' || n,
                     'group ' || n, NULL, ARRAY['dev-' || n, 'dev-' || (n % 50000), 'shared-' || (n % 100)],
                     now(), now(), 1
                FROM generate_series(1, 1000000) AS n;
            INSERT INTO fleetgroups.changes
              SELECT 'site-' || lpad((n % 1000)::text, 3, '0'), 'store', n, now(), 'updated',
                     'acct-' || (n % 7), 'grp-' || n, 'admin'
                FROM generate_series(1, 1000000) AS n;
            ANALYZE fleetgroups.groups; ANALYZE fleetgroups.changes;""", timeout=1800)
    plans = {}
    for name, q in [
        ("groups of one gateway and account",
         "SELECT id, name, description, devices, creation, last_modified FROM fleetgroups.groups "
         "WHERE gateway_id = 'site-042' AND account = 'acct-0' ORDER BY substr(id, 5)::bigint"),
        ("every group holding a device",
         "SELECT gateway_id, account, id, name FROM fleetgroups.groups "
         "WHERE devices @> ARRAY['dev-4242']"),
        ("who changed a group",
         "SELECT time, op, user_name FROM fleetgroups.changes WHERE gateway_id = 'site-042' "
         "AND account = 'acct-0' AND id = 'grp-42' ORDER BY seq"),
    ]:
        plans[name] = psql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) {q}")
    return plans


def main():
    key = sys.argv[5]
    # A SIGTERM still runs the finally below: no gateway is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    setup_pg()
    results = []
    plans = {}
    baseline = {}
    try:
        if ENV.get("BASELINE", "0") == "1":
            baseline = idle_baseline()
        for mode in filter(None, MODES):
            results.append(run_mode(mode, key))
        if ENV.get("EXPLAIN", "1") == "1":
            plans = explain_at_scale()
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.terminate()
        for p in STARTED:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            pg_stop()
        except Exception:  # noqa: BLE001
            pass
    print(json.dumps({"results": results, "plans": plans, "baseline": baseline}))


if __name__ == "__main__":
    main()
