#!/usr/bin/env python3
"""Helpers for benches/load/run.sh (standard library only).

  ports N                      print N distinct free TCP ports on 127.0.0.1
  wait-port PORT SECONDS       exit 0 once 127.0.0.1:PORT accepts a connection, 1 on timeout
  storm --port P ...           paced stream of JSON logins against an authgate (see --help)
  cpu PID                      print the CPU seconds (user + system) used so far by PID and
                               its descendants
  scrape-metrics --log F ...   find authgate's metrics address in its log, scrape /metrics once
                               and sum one metric over its labels (JSON result)
  report --raw F --meta F ...  print the result tables and write the JSON file
"""

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


# ---------------------------------------------------------------------------------------- ports

def cmd_ports(args):
    socks = []
    try:
        for _ in range(args.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


def cmd_wait_port(args):
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", args.port), timeout=0.5):
                return 0
        except OSError:
            time.sleep(0.05)
    return 1


# ------------------------------------------------------------------------------------------ cpu

def _tree(pid):
    """PID and its descendants (Linux /proc)."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for c in f.read().split():
                out += _tree(c)
    except OSError:
        pass
    return out


# authgate's log writer thread (src/telemetry/sink.rs): its CPU is reported on its own.
LOG_THREAD = "authgate-log"


def cmd_cpu(args):
    """Prints the user and the system CPU seconds of a process tree, and the CPU seconds (user +
    system) of its threads named LOG_THREAD, space-separated."""
    user = system = log = 0
    for p in _tree(str(args.pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        user += int(fields[11])
        system += int(fields[12])
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            tasks = []
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/stat") as f:
                    name, rest = f.read().split("(", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue
            if name == LOG_THREAD:
                tf = rest.split()
                log += int(tf[11]) + int(tf[12])
    hz = os.sysconf("SC_CLK_TCK")
    print(f"{user / hz:.3f} {system / hz:.3f} {log / hz:.3f}")


def _perf_shares(path, *extra):
    """{key: percent} from `perf report --sort KEY` of `path` (overhead column, no call graph)."""
    out = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children", "-g", "none",
                          "-F", "overhead,sample,comm,sym" if "sym" in extra else "overhead,sample,comm",
                          *extra], capture_output=True, text=True, timeout=120)
    rows = []
    for line in out.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), int(parts[1]), parts[2]))
    return rows


# Worker-side access-log code that keeps its own symbol (most of it is inlined into the request
# future, so this share is a lower bound).
ACCESS_SYMBOLS = ("mpmc::Sender<T>::try_send", "sink::Sink::push", "LoggedPath", "TraceId::of",
                  "AccessRecord")


def cmd_perf_shares(args):
    """key=value: CPU samples of one authgate, the log writer thread's share of them, and the
    share of named access-log symbols on the other threads."""
    comms = _perf_shares(args.data, "--sort", "comm")
    total = sum(n for _, n, _ in comms)
    log = sum(n for _, n, c in comms if c.strip() == LOG_THREAD)
    syms = _perf_shares(args.data, "--sort", "comm,sym")
    worker = sum(n for _, n, rest in syms
                 if not rest.startswith(LOG_THREAD) and any(a in rest for a in ACCESS_SYMBOLS))
    if total == 0:
        return 1
    print(f"perf_samples={total} perf_log_thread_pct={100 * log / total:.3f} "
          f"perf_worker_log_pct={100 * worker / total:.3f}")
    return 0


# ---------------------------------------------------------------------------------------- storm

async def _one_login(port, body, timeout):
    """One login on a fresh connection (as a browser would); returns (status, seconds)."""
    t = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        req = (
            "POST /.auth/login HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        writer.write(req)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else -1
        # Read the rest so the whole response is accounted for.
        await asyncio.wait_for(reader.read(), timeout)
        return status, time.perf_counter() - t
    except asyncio.TimeoutError:
        return "timeout", time.perf_counter() - t
    except OSError as e:
        return f"error:{type(e).__name__}", time.perf_counter() - t
    finally:
        if writer is not None:
            writer.close()


async def _storm(args):
    body = json.dumps({"username": args.username, "password": args.password}).encode()
    results = []          # (scheduled_offset, status, latency_s)
    skipped = 0           # ticks at which the concurrency cap was already reached
    in_flight = 0
    tasks = set()

    async def run_one(offset):
        nonlocal in_flight
        in_flight += 1
        try:
            status, lat = await _one_login(args.port, body, args.timeout)
            results.append((offset, status, lat))
        finally:
            in_flight -= 1

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + args.duration
    if args.rate > 0:
        # Open loop: one login every 1/rate s on schedule, whatever the previous ones do,
        # unless `concurrency` are already in flight (then the tick is counted as skipped).
        i = 0
        while True:
            at = t0 + i / args.rate
            if at >= end:
                break
            now = loop.time()
            if at > now:
                await asyncio.sleep(at - now)
            if in_flight < args.concurrency:
                tsk = asyncio.ensure_future(run_one(at - t0))
                tasks.add(tsk)
                tsk.add_done_callback(tasks.discard)
            else:
                skipped += 1
            i += 1
    else:
        # Closed loop: `concurrency` clients logging in back to back until the end.
        async def worker():
            while loop.time() < end:
                await run_one(loop.time() - t0)
        tasks = {asyncio.ensure_future(worker()) for _ in range(args.concurrency)}
    sent_end = loop.time()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=args.timeout + 1)
        for p in pending:
            p.cancel()
    if args.rate <= 0:
        # Closed loop: attempts were started until `end` and the last ones finished after it.
        sent_end = min(loop.time(), end + args.timeout)
    else:
        # Open loop: the schedule covered [t0, end).
        sent_end = max(sent_end, end)
    elapsed = sent_end - t0
    lats = sorted(r[2] for r in results)
    statuses = {}
    for r in results:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
    ok = statuses.get("200", 0)

    def pct(p):
        if not lats:
            return None
        k = min(len(lats) - 1, max(0, int(round(p / 100.0 * len(lats) + 0.5)) - 1))
        return round(lats[k] * 1e6)

    return {
        "mode": "open-loop" if args.rate > 0 else "closed-loop",
        "target_rate": args.rate,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 3),
        "attempts": len(results),
        "ok": ok,
        "statuses": statuses,
        "skipped_at_concurrency_cap": skipped,
        "achieved_rate": round(len(results) / elapsed, 2) if elapsed > 0 else 0,
        "ok_rate": round(ok / elapsed, 2) if elapsed > 0 else 0,
        "latency_p50_us": pct(50),
        "latency_p99_us": pct(99),
        "latency_max_us": round(lats[-1] * 1e6) if lats else None,
    }


def cmd_storm(args):
    res = asyncio.run(_storm(args))
    text = json.dumps(res, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


# ------------------------------------------------------------------------------------- metrics

_METRICS_LINE = "listening (metrics)"
# `addr=127.0.0.1:9464` (text log) or `"addr":"127.0.0.1:9464"` (JSON log).
_ADDR_RE = re.compile(r'addr"?\s*[=:]\s*"?(\[[0-9A-Fa-f:.]+\]:\d+|[0-9.]+:\d+)')


def _metrics_addr(log, wait):
    """The address of the `listening (metrics)` line of an authgate log, waiting up to `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with open(log, errors="replace") as f:
                for line in f:
                    if _METRICS_LINE in line:
                        m = _ADDR_RE.search(line.split(_METRICS_LINE, 1)[1]) or _ADDR_RE.search(line)
                        if m:
                            return m.group(1)
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def _sum_metric(text, name):
    """Sum of every sample of `name` (any labels) in a Prometheus text exposition; (sum, series)."""
    total, series = 0.0, 0
    pat = re.compile(r"^" + re.escape(name) + r"(\{.*\})?\s+(\S+)")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = pat.match(line)
        if m:
            try:
                total += float(m.group(2))
                series += 1
            except ValueError:
                pass
    return total, series


def cmd_scrape_metrics(args):
    res = {"metric": args.metric, "expect_min": args.expect_min, "addr": None, "total": None,
           "series": 0, "ok": None, "error": None}
    addr = _metrics_addr(args.log, args.wait)
    if addr is None:
        res["error"] = f"no '{_METRICS_LINE}' line with an addr in {args.log}"
    elif not (addr.startswith("127.") or addr.startswith("[::1]")):
        res["error"] = f"metrics address {addr} is not on loopback: not scraped"
    else:
        res["addr"] = addr
        url = f"http://{addr}{args.path}"
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as r:
                body = r.read().decode("utf-8", "replace")
                res["http_status"] = r.status
        except Exception as e:  # noqa: BLE001 — any failure is reported, never fatal
            res["error"] = f"GET {url}: {e}"
        else:
            total, series = _sum_metric(body, args.metric)
            res["series"] = series
            if series == 0:
                res["error"] = f"GET {url}: no {args.metric} sample"
            else:
                res["total"] = total
                res["ok"] = total >= args.expect_min
    text = json.dumps(res, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print("  " + _metrics_sentence(res))
    return 0 if res["ok"] else 1


def _metrics_sentence(m):
    if m.get("error"):
        return f"metrics check: not done ({m['error']})"
    return (f"metrics check: {m['metric']} summed over {m['series']} series = {m['total']:,.0f}, "
            f"wrk got {m['expect_min']:,} responses: "
            + ("ok (>=)" if m["ok"] else "LOW (fewer than wrk's responses)")
            + f" [{m['addr']}]")


# --------------------------------------------------------------------------------------- report

def parse_kv(s):
    out = {}
    for tok in s.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v) if "." in v else int(v)
            except ValueError:
                out[k] = v
    return out


def load_raw(path):
    runs = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            phase, target, rnd, rest = line.split(" ", 3)
            r = {"phase": phase, "target": target, "round": int(rnd)}
            if rest.startswith("WRKRESULT"):
                r.update(parse_kv(rest[len("WRKRESULT"):]))
                errs = sum(r.get(k, 0) for k in
                           ("err_connect", "err_read", "err_write", "err_timeout", "err_status"))
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r.get("duration_us") else 0.0
                r["valid"] = errs == 0 and r.get("requests", 0) > 0
                r["invalid_reason"] = None if r["valid"] else (
                    "no requests" if r.get("requests", 0) == 0 else
                    ", ".join(f"{k}={r[k]}" for k in
                              ("err_connect", "err_read", "err_write", "err_timeout", "err_status")
                              if r.get(k)))
            elif rest.startswith("MISSING"):
                r.update({"valid": False, "invalid_reason": "wrk printed no result", "rps": 0.0})
            elif rest.startswith("STORMFILE="):
                try:
                    with open(rest.split("=", 1)[1]) as sf:
                        r["storm"] = json.load(sf)
                except (OSError, ValueError) as e:
                    r["storm"] = {"error": str(e)}
            runs.append(r)
    return runs


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                meta[k] = v
    return meta


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_num(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def summarize(runs, phase, order):
    rows = []
    for t in order:
        rs = [r for r in runs if r["phase"] == phase and r["target"] == t]
        if not rs:
            continue
        good = [r for r in rs if r["valid"]]
        rows.append({
            "target": t,
            "runs": len(rs),
            "invalid_runs": len(rs) - len(good),
            "invalid_reasons": sorted({r["invalid_reason"] for r in rs if not r["valid"]}),
            "rps": median([r["rps"] for r in good]),
            "rps_all": [round(r["rps"], 1) for r in rs],
            "p50_us": median([r["lat_p50_us"] for r in good]),
            "p99_us": median([r["lat_p99_us"] for r in good]),
            "p50_all": [r["lat_p50_us"] for r in rs],
            # CPU time of the server process tree per request (user + system, 10 ms ticks), and
            # its user part: the server's own code, without the kernel's socket and wake-up work.
            "cpu_us_per_req": median([r["server_cpu_s"] * 1e6 / r["requests"] for r in good
                                      if "server_cpu_s" in r and r.get("requests")]),
            "user_us_per_req": median([r["server_user_s"] * 1e6 / r["requests"] for r in good
                                       if "server_user_s" in r and r.get("requests")]),
            # Sampled with PERF=1: the log writer thread's share of the server's CPU samples,
            # and named access-log code on its workers (a lower bound: most is inlined).
            "perf_log_thread_pct": median([r["perf_log_thread_pct"] for r in good
                                           if "perf_log_thread_pct" in r]),
            "perf_worker_log_pct": median([r["perf_worker_log_pct"] for r in good
                                           if "perf_worker_log_pct" in r]),
            # Of which authgate's log writer thread (formatting and writing the access log).
            "logthread_us_per_req": median([r["server_log_s"] * 1e6 / r["requests"] for r in good
                                            if "server_log_s" in r and r.get("requests")]),
        })
    return rows


def print_table(headers, rows, aligns):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                         for c, w, a in zip(cells, widths, aligns))
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


# (label, A, B, issue 14's bound on A's req/s over B's, or None): A differs from B by one setting.
COMPARISONS = [
    ("access log cost", "authgate-session", "authgate-nolog", 0.97),
    ("metrics cost", "authgate-metrics", "authgate-session", 0.98),
    ("nginx access log", "nginx-proxy-log", "nginx-proxy", None),
]


def compare(runs, rows, phase):
    """A vs B for each pair of COMPARISONS present in `rows` (summaries of `phase`)."""
    by = {r["target"]: r for r in rows}
    out = []
    for label, a, b, bound in COMPARISONS:
        ra, rb = by.get(a), by.get(b)
        if not ra or not rb:
            continue
        def ratio(x, y):
            return x / y if x and y else None
        def diff(x, y):
            return x - y if x is not None and y is not None else None
        # Per round: A and B of the same round ran next to each other.
        va = {r["round"]: r for r in runs if r["phase"] == phase and r["target"] == a and r["valid"]}
        vb = {r["round"]: r for r in runs if r["phase"] == phase and r["target"] == b and r["valid"]}
        per_round = [va[k]["rps"] / vb[k]["rps"] for k in sorted(va) if k in vb and vb[k]["rps"]]
        lo, hi = median_ci(per_round)
        c = {
            "label": label, "phase": phase, "a": a, "b": b,
            "rps_ratio": ratio(ra["rps"], rb["rps"]),
            "rps_ratio_per_round": [round(x, 3) for x in per_round],
            # The median of the per-round ratios and its 95 % confidence interval: how far the
            # noise of this run leaves the true ratio open.
            "rps_ratio_round_median": median(per_round),
            "rps_ratio_ci95": [lo, hi] if lo is not None else None,
            "logthread_a": ra["logthread_us_per_req"],
            "cpu_a": ra["cpu_us_per_req"], "cpu_b": rb["cpu_us_per_req"],
            "cpu_ratio": ratio(ra["cpu_us_per_req"], rb["cpu_us_per_req"]),
            "cpu_extra_us": diff(ra["cpu_us_per_req"], rb["cpu_us_per_req"]),
            "user_extra_us": diff(ra["user_us_per_req"], rb["user_us_per_req"]),
            "p50_extra_us": diff(ra["p50_us"], rb["p50_us"]),
            "bound": bound if phase == "load" else None,
        }
        c["within_bound"] = (c["rps_ratio"] >= bound
                             if c["bound"] is not None and c["rps_ratio"] is not None else None)
        out.append(c)
    return out


def median_ci(xs, level=0.95):
    """Distribution-free confidence interval of the median of xs: order statistics from the
    binomial(n, 1/2) distribution (no normality assumed). (None, None) below 6 values, where
    even the extremes do not cover the median with 95 %."""
    n = len(xs)
    if n < 6:
        return None, None
    from math import comb
    ys = sorted(xs)
    # The largest k with P(Binomial(n, 1/2) < k) <= (1 - level) / 2: [ys[k-1], ys[n-k]] covers.
    alpha, k, tail = (1 - level) / 2, 0, 0.0
    while True:
        nxt = tail + comb(n, k) / 2 ** n
        if nxt > alpha:
            break
        tail, k = nxt, k + 1
    if k == 0:
        return None, None
    return ys[k - 1], ys[n - k]


def print_comparisons(comps):
    def bound_cell(c):
        if c["bound"] is None:
            return "-"
        return f">= {c['bound']:.2f}: " + {True: "yes", False: "NO", None: "?"}[c["within_bound"]]
    rows = [[c["label"], {"load": "throughput", "latency1": "1 connection"}[c["phase"]],
             f"{c['a']} / {c['b']}", fmt_num(c["rps_ratio"], 3),
             " ".join(f"{x:.3f}" for x in c["rps_ratio_per_round"]) or "-",
             (f"{c['rps_ratio_round_median']:.3f} [{c['rps_ratio_ci95'][0]:.3f}, "
              f"{c['rps_ratio_ci95'][1]:.3f}]" if c["rps_ratio_ci95"] else "-"),
             f"{fmt_num(c['cpu_a'], 1)} / {fmt_num(c['cpu_b'], 1)}", fmt_num(c["cpu_ratio"], 3),
             fmt_num(c["cpu_extra_us"], 2), fmt_num(c["user_extra_us"], 2),
             fmt_num(c["logthread_a"], 2), fmt_num(c["p50_extra_us"]), bound_cell(c)]
            for c in comps]
    print_table(["comparison", "phase", "A / B", "req/s A/B", "per round",
                 "round median [95% CI]", "cpu us/req A / B", "cpu A/B", "+cpu us/req",
                 "+user us/req", "A's log thread us/req", "+p50 us", "issue 14 bound (req/s)"],
                rows, "lllrllrrrrrrl")
    print("  round median [95% CI]: median of the per-round ratios with its distribution-free "
          "95 % interval (6 rounds at least); A's log thread: CPU of authgate's log writer "
          "thread per request of A (part of A's cpu us/req)")


def cmd_report(args):
    meta = load_meta(args.meta)
    runs = load_raw(args.raw)
    order = meta.get("targets", "").split()
    out = {"meta": meta, "runs": runs}

    print()
    print(f"machine: nproc={meta.get('nproc')}  cpu: {meta.get('cpu_model')}  kernel: {meta.get('kernel')}")
    print(f"layout: {meta.get('layout', '?')} ({meta.get('layout_desc', '')})")
    print(f"authgate: default configuration (access log on) but for authgate-nolog; "
          f"RUST_LOG {meta.get('authgate_rust_log')}, log format {meta.get('authgate_log_format')}, "
          f"stderr to a file per instance")
    print(f"settings: duration={meta.get('duration')}s connections={meta.get('connections')} "
          f"wrk_threads={meta.get('threads')} rounds={meta.get('rounds')} pin={meta.get('pin')}"
          + (f" (upstream cpus {meta.get('upstream_cpus')}, server cpus {meta.get('server_cpus')}, "
             f"load cpus {meta.get('load_cpus')})" if meta.get("pin") == "1" else "")
          + f" authgate workers={meta.get('authgate_workers')}")
    if meta.get("authgate_threads"):
        print(f"authgate serving threads at start ({meta.get('authgate_runtime', 'thread-per-core')}): {meta.get('authgate_threads')}")

    thr = summarize(runs, "load", order)
    out["throughput"] = thr
    if thr:
        base_up = next((r["rps"] for r in thr if r["target"] == "upstream"), None)
        base_ng = next((r["rps"] for r in thr if r["target"] == "nginx-proxy"), None)
        print()
        print(f"Throughput: median over {meta.get('rounds')} round(s), "
              f"{meta.get('connections')} connections, {meta.get('duration')}s per run")
        rows = []
        for r in thr:
            rps = r["rps"]
            r["ratio_vs_upstream"] = rps / base_up if rps and base_up else None
            r["ratio_vs_nginx_proxy"] = rps / base_ng if rps and base_ng else None
            # Inverse throughput difference: the per-request cost over the nginx hop when the
            # server under test is the bottleneck (one core each).
            r["us_per_req_over_nginx"] = (1e6 / rps - 1e6 / base_ng) if rps and base_ng else None
            cpu_ng = next((x["cpu_us_per_req"] for x in thr if x["target"] == "nginx-proxy"), None)
            r["cpu_vs_nginx_proxy"] = (r["cpu_us_per_req"] / cpu_ng
                                       if r["cpu_us_per_req"] and cpu_ng else None)
            status = "ok" if r["invalid_runs"] == 0 else (
                "INVALID" if r["invalid_runs"] == r["runs"] else
                f"INVALID {r['invalid_runs']}/{r['runs']}")
            rows.append([
                r["target"], fmt_num(rps), fmt_num(r["p50_us"]), fmt_num(r["p99_us"]),
                fmt_num(r["ratio_vs_upstream"], 2), fmt_num(r["ratio_vs_nginx_proxy"], 2),
                fmt_num(r["us_per_req_over_nginx"], 1),
                fmt_num(r["cpu_us_per_req"], 1), fmt_num(r["cpu_vs_nginx_proxy"], 2),
                fmt_num(r["user_us_per_req"], 1),
                " ".join(fmt_num(x) for x in r["rps_all"]), status,
            ])
        print_table(["target", "req/s", "p50 us", "p99 us", "/upstream", "/nginx",
                     "+us/req vs nginx", "cpu us/req", "cpu /nginx", "user us/req",
                     "req/s per round", "status"],
                    rows, "lrrrrrrrrrll")
        print("  cpu us/req: CPU time (user + system) of the server's own processes per request, "
              "median over rounds; the load generator and the upstream are not counted; "
              "user us/req: its user-space part (the server's own code)")
        for r in thr:
            if r["invalid_runs"]:
                print(f"  INVALID {r['target']}: {'; '.join(r['invalid_reasons'])}")
        sampled = [r for r in thr if r.get("perf_log_thread_pct") is not None]
        if sampled:
            print("  perf (cpu-clock samples of each authgate process, median over rounds): "
                  + "; ".join(f"{r['target']}: log writer thread {r['perf_log_thread_pct']:.2f} %, "
                              f"named access-log code on the worker {r['perf_worker_log_pct']:.2f} %"
                              for r in sampled)
                  + " of its CPU")
        if any(r["target"] in ("authgate-hs256", "authgate-eddsa") for r in thr):
            if meta.get("jwt_cache_size") == "0":
                print("  note: authgate's verified-token cache is off (JWT_CACHE_SIZE=0): every request "
                      "verifies the signature, as HAProxy's jwt_verify does.")
            else:
                print(f"  note: authgate's JWT targets get one token over and over, so after the first request "
                      f"they are served from the verified-token cache (cache_size={meta.get('jwt_cache_size')}); "
                      f"HAProxy verifies the signature on every request. JWT_CACHE_SIZE=0 turns the cache off.")

    comps = compare(runs, thr, "load") if thr else []

    lat = summarize(runs, "latency1", order)
    out["latency_1conn"] = lat
    if lat:
        print()
        print(f"Latency with 1 connection (wrk -t1 -c1, {meta.get('lat_duration')}s, "
              f"median over {meta.get('lat_rounds', '1')} interleaved round(s))")
        rows = [[r["target"], fmt_num(r["rps"]), fmt_num(r["p50_us"]), fmt_num(r["p99_us"]),
                 fmt_num(r["cpu_us_per_req"], 1), fmt_num(r["user_us_per_req"], 1),
                 " ".join("-" if v is None else str(round(v)) for v in r["p50_all"]),
                 "ok" if r["invalid_runs"] == 0 else "INVALID"] for r in lat]
        print_table(["target", "req/s", "p50 us", "p99 us", "cpu us/req", "user us/req",
                     "p50 per round", "status"], rows, "lrrrrrll")
        print("  with one connection every request wakes each process from sleep: most of the CPU "
              "is the kernel's (and, on a VM, the hypervisor's) wake-up path; the user part is "
              "what the server's own code costs on cold caches")
        for r in lat:
            if r["invalid_runs"]:
                print(f"  INVALID {r['target']}: {'; '.join(r['invalid_reasons'])}")

    comps += compare(runs, lat, "latency1") if lat else []
    out["comparisons"] = comps
    metrics = None
    if meta.get("metrics_check") and os.path.exists(meta["metrics_check"]):
        try:
            with open(meta["metrics_check"]) as f:
                metrics = json.load(f)
        except (OSError, ValueError) as e:
            metrics = {"error": str(e)}
    out["metrics_check"] = metrics
    logs = []
    if meta.get("log_sizes") and os.path.exists(meta["log_sizes"]):
        with open(meta["log_sizes"]) as f:
            for line in f:
                if line.strip():
                    t, rest = line.split(" ", 1)
                    logs.append({"target": t, **parse_kv(rest)})
    out["log_sizes"] = logs
    if comps or metrics or logs or meta.get("skipped"):
        print()
        print(f"Access log and metrics, same interleaved run ({meta.get('layout')} layout): "
              f"A differs from B by one setting")
        if comps:
            print_comparisons(comps)
            print("  req/s A/B: ratio of the medians (per round: A and B of the same round); "
                  "+cpu/+user/+p50: A minus B; issue 14 asks access log on >= 0.97 of off, "
                  "metrics on >= 0.98 of off")
        for l in logs:
            sent = l.get("sent") or 0
            print(f"  log of {l['target']}: {l.get('lines', 0):,} lines, {l.get('bytes', 0) / 1048576:,.1f} MiB "
                  f"for {sent:,} responses to wrk"
                  + (f" ({l.get('bytes', 0) / sent:,.0f} bytes per response)" if sent else ""))
        if metrics:
            print("  " + _metrics_sentence(metrics))
        if meta.get("skipped"):
            print(f"  not run: {meta['skipped']}")

    base = [r for r in runs if r["phase"] == "storm-base"]
    withs = [r for r in runs if r["phase"] == "storm-with"]
    storms = [r["storm"] for r in runs if r["phase"] == "storm-logins"]
    if base or withs:
        def med(rs, k):
            good = [r[k] for r in rs if r["valid"]]
            return median(good)
        p99_a, p99_b = med(base, "lat_p99_us"), med(withs, "lat_p99_us")
        p50_a, p50_b = med(base, "lat_p50_us"), med(withs, "lat_p50_us")
        rps_a, rps_b = med(base, "rps"), med(withs, "rps")
        storm = {
            "target": meta.get("storm_target"),
            "get_connections": meta.get("storm_connections"),
            "get_rate_target": meta.get("storm_get_rate"),
            "login_rate": meta.get("login_rate"),
            "login_concurrency": meta.get("login_concurrency"),
            "without": {"rps": rps_a, "p50_us": p50_a, "p99_us": p99_a,
                        "invalid_runs": sum(1 for r in base if not r["valid"])},
            "with": {"rps": rps_b, "p50_us": p50_b, "p99_us": p99_b,
                     "invalid_runs": sum(1 for r in withs if not r["valid"])},
            "p99_ratio": (p99_b / p99_a) if p99_a and p99_b else None,
            "logins": storms,
        }
        out["login_storm"] = storm
        print()
        rate = meta.get("login_rate")
        print(f"Login storm against {meta.get('storm_target')}: authenticated GETs "
              f"({meta.get('storm_connections')} connections, offered ~{meta.get('storm_get_rate')} req/s; "
              f"0 = unpaced) without / with "
              + (f"{rate} logins/s (at most {meta.get('login_concurrency')} in flight)"
                 if rate not in (None, "0") else
                 f"{meta.get('login_concurrency')} clients logging in back to back")
              + f", login_concurrency (hash pool) = {meta.get('hash_pool')}")
        rows = [
            ["without logins", fmt_num(rps_a), fmt_num(p50_a), fmt_num(p99_a),
             "ok" if storm["without"]["invalid_runs"] == 0 else "INVALID"],
            ["with logins", fmt_num(rps_b), fmt_num(p50_b), fmt_num(p99_b),
             "ok" if storm["with"]["invalid_runs"] == 0 else "INVALID"],
        ]
        print_table(["GET traffic", "req/s", "p50 us", "p99 us", "status"], rows, "lrrrl")
        print(f"p99 with / without: {fmt_num(storm['p99_ratio'], 2)}")
        for r in base + withs:
            if not r["valid"]:
                print(f"  INVALID {r['phase']} round {r['round']}: {r['invalid_reason']}")
        for i, s in enumerate(storms, 1):
            if "error" in s:
                print(f"  logins round {i}: no result ({s['error']})")
                continue
            print(f"  logins round {i}: {s['attempts']} attempts in {s['duration_s']}s "
                  f"({s['achieved_rate']}/s, {s['ok_rate']}/s succeeded), statuses {s['statuses']}, "
                  f"skipped at cap {s['skipped_at_concurrency_cap']}, login latency "
                  f"p50 {fmt_num(s['latency_p50_us'] and s['latency_p50_us'] / 1000, 1)} ms "
                  f"p99 {fmt_num(s['latency_p99_us'] and s['latency_p99_us'] / 1000, 1)} ms")
            if s.get("ok", 0) != s.get("attempts", 0):
                print("  WARNING: some logins did not succeed (see statuses): the storm is not "
                      "the one asked for")

    if args.memory and os.path.exists(args.memory):
        with open(args.memory) as f:
            mem = [l.rstrip("\n") for l in f if l.strip()]
        out["memory"] = mem
        print()
        print("Session memory (cargo bench --bench session_memory)")
        for l in mem:
            print("  " + l)

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
        print()
        print(f"raw results: {args.json}")

    bad = any(r["invalid_runs"] for r in thr + lat)
    bad = bad or any(not r["valid"] for r in base + withs)
    return 2 if bad else 0


# ----------------------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)

    s = sub.add_parser("wait-port")
    s.add_argument("port", type=int)
    s.add_argument("seconds", type=float)
    s.set_defaults(fn=cmd_wait_port)

    s = sub.add_parser("cpu")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=cmd_cpu)

    s = sub.add_parser("perf-shares", help="log-thread and access-log shares of a perf.data")
    s.add_argument("data")
    s.set_defaults(fn=cmd_perf_shares)

    s = sub.add_parser("storm", help="stream of JSON logins to 127.0.0.1:PORT/.auth/login")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--username", required=True)
    s.add_argument("--password", required=True)
    s.add_argument("--rate", type=float, default=50.0,
                   help="logins per second, open loop (0 = closed loop with --concurrency clients)")
    s.add_argument("--concurrency", type=int, default=200, help="cap on logins in flight")
    s.add_argument("--duration", type=float, required=True, help="seconds")
    s.add_argument("--timeout", type=float, default=30.0, help="per-login timeout, seconds")
    s.add_argument("--out")
    s.set_defaults(fn=cmd_storm)

    s = sub.add_parser("scrape-metrics",
                       help="scrape the /metrics of the authgate whose log is --log, sum one metric")
    s.add_argument("--log", required=True, help="authgate's log (has the 'listening (metrics)' line)")
    s.add_argument("--metric", default="authgate_http_requests_total")
    s.add_argument("--expect-min", type=int, default=0, help="the sum must be at least this")
    s.add_argument("--path", default="/metrics")
    s.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the log line")
    s.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout, seconds")
    s.add_argument("--out", help="write the JSON result here")
    s.set_defaults(fn=cmd_scrape_metrics)

    s = sub.add_parser("report")
    s.add_argument("--raw", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--memory")
    s.add_argument("--json")
    s.set_defaults(fn=cmd_report)

    args = p.parse_args()
    sys.exit(args.fn(args) or 0)


if __name__ == "__main__":
    main()
