#!/usr/bin/python3
"""report.py TARGET... : runs each benchmark target (`make -s TARGET`), keeps its output in
build/bench/<TARGET>.log, and writes build/bench/report.md, a markdown table (benchmark,
figure, baseline, ratio, target, met?) parsed from what each benchmark prints, plus
build/bench/storm.png, boot time (p50/p99, with and without peers) against the number of
racks, drawn by gnuplot from build/bench/storm.json (tests/rack/storm.py).

A benchmark that fails is marked failed in the table and the others still run; a
benchmark whose output has no figure this script understands is listed with its raw
summary line. Exit status: 0 when the report was written, even if benchmarks failed
(the table says which); 1 when the report could not be written.

Options: --only-report (parse existing logs, run nothing), --timeout SEC per target
(default 3600), --out DIR (default build/bench), --hold-page-reporting (or
BENCH_HOLD_PAGE_REPORTING=1).

Free page reporting: a guest kernel with virtio-balloon page reporting hands memory it
frees back to the hypervisor, and the next use of that memory costs a host fault (on the
VM this was built on, new page cache is written at about 250 MB/s instead of 6 GB/s). A
cold read writes new page cache (the chunk store) where curl to /dev/null writes none, so
the report says whether reporting was on; --hold-page-reporting raises
page_reporting_order above the largest buddy order for the run (no block qualifies, so
nothing is reported) and puts it back afterwards, which makes such a VM's memory behave
as a physical machine's does.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

NUM = r"(\d+(?:\.\d+)?)"


def met(value, op, target):
    if value is None or target is None:
        return "—"
    ok = {"<=": value <= target, ">=": value >= target, "<": value < target,
          ">": value > target, "=": abs(value - target) < 1e-9}[op]
    return "yes" if ok else "**no**"


def row(bench, figure, baseline="—", ratio=None, op=None, target=None, target_text=None):
    r = "—" if ratio is None else f"{ratio:.2f}x"
    t = target_text or ("—" if target is None else f"{op} {target:g}x")
    return [bench, figure, baseline, r, t, met(ratio, op, target)]


def generic(name, text):
    """Lines that name a ratio or a target: ratio and target parsed where possible."""
    rows = []
    for line in text.splitlines():
        s = line.strip()
        if not re.search(r"ratio|target", s, re.I) or not re.search(r"\d", s):
            continue
        m = re.search(r"ratio[^0-9]*" + NUM + r"x", s, re.I) or re.search(NUM + r"x", s)
        t = re.search(r"target:?\s*(<=|>=|<|>|=)?\s*" + NUM + r"x?", s)
        ratio = float(m.group(1)) if m else None
        op = (t.group(1) or "=") if t else None
        target = float(t.group(2)) if t else None
        rows.append(row(name, f"`{s[:110]}`", ratio=ratio, op=op, target=target))
    if not rows:
        last = [l.strip() for l in text.splitlines() if l.strip()]
        rows.append(row(name, f"`{last[-1][:110]}`" if last else "(no output)"))
    return rows


def storm_rows(name, text):
    m = re.search(r"^storm-summary (\{.*\})$", text, re.M)
    if not m:
        return None
    s = json.loads(m.group(1))
    a, b = s["seed_over_unique"], s["seed_over_unique_no_peers"]
    rows = [row(f"{name}: seed bytes / unique trace bytes", f"{a:.3f}",
                f"{b:.3f} (no peers)", a, "<=", 1.05,
                target_text="figure <= 1.05")]
    rows[0][5] = met(a, "<=", 1.05)
    if "seed_over_unique_readahead0" in s:
        c = s["seed_over_unique_readahead0"]
        rows.append(row(f"{name}: seed / unique, readahead 0", f"{c:.3f}", f"{b:.3f}",
                        c, "<=", 1.05, target_text="figure <= 1.05"))
        rows[-1][5] = met(c, "<=", 1.05)
    for p in ("p50", "p99"):
        x, y = s[f"{p}_s"], s[f"{p}_s_no_peers"]
        rows.append(row(f"{name}: per-VM boot time {p}", f"{x:.3f} s",
                        f"{y:.3f} s (no peers)", x / y if y else None))
    return rows


def publish_rows(name, text):
    pub = re.search(r"rackdisk image publish\s+" + NUM + r" s", text)
    base = re.search(r"sha256sum \+ zstd.*?" + NUM + r" s", text)
    ratio = re.search(r"ratio rackdisk/baseline\s+" + NUM + r"x \(target <= " + NUM, text)
    if not (pub and base and ratio):
        return None
    return [row(f"{name}: image publish", f"{pub.group(1)} s", f"{base.group(1)} s "
                "(sha256sum + zstd)", float(ratio.group(1)), "<=", float(ratio.group(2)))]


def peer_rows(name, text):
    """bench_peer.c: each peer_client row against curl with as many streams (the row
    says which: "(vs curl, N stream(s))"). Older logs, one curl baseline for every row,
    still parse."""
    base = {int(m.group(1)): m.group(2) for m in re.finditer(
        r"^\s*curl, (\d+) streams? \(baseline[^:]*:\s+" + NUM + " MB/s", text, re.M)}
    old = re.search(r"curl \(baseline[^:]*:\s+" + NUM + " MB/s", text)
    if not base and not old:
        return None
    rows = []
    tgt = re.search(r"target: >= " + NUM, text)
    for m in re.finditer(r"^\s*(peer_client_[^:]+):\s+" + NUM + r" MB/s\s+ratio " + NUM +
                         r"x(?: \(vs curl, (\d+) streams?\))?", text, re.M):
        if m.group(4):
            n = int(m.group(4))
            if n not in base:
                continue
            baseline = f"{base[n]} MB/s (curl, {n} stream{'s' if n > 1 else ''})"
        elif old:
            baseline = f"{old.group(1)} MB/s (curl)"
        else:
            continue
        rows.append(row(f"{name}: {m.group(1).strip()}", f"{m.group(2)} MB/s", baseline,
                        float(m.group(3)), ">=", float(tgt.group(1)) if tgt else None))
    return rows or None


def cluster_appliance_rows(name, text):
    b = re.search(r"B via iSCSI from A's cache:\s+" + NUM + " MB/s", text)
    c = re.search(r"baseline curl keep-alive:\s+" + NUM + " MB/s", text)
    r = re.search(r"ratio " + NUM + r"x \(target >= " + NUM, text)
    g = re.search(NUM + r" per chunk \(target " + NUM + r"; baseline without the cluster: " +
                  NUM, text)
    w = re.search(r"iSCSI ceiling: B re-reading warm " + NUM + r" MB/s.*at most " + NUM + "x",
                  text)
    rows = []
    if b and c and r:
        fig = f"{b.group(1)} MB/s" + (f" (warm ceiling {w.group(1)} MB/s, max {w.group(2)}x)"
                                      if w else "")
        rows.append(row(f"{name}: peer reads via iSCSI", fig,
                        f"{c.group(1)} MB/s (curl)", float(r.group(1)), ">=",
                        float(r.group(2))))
    if g:
        v = float(g.group(1))
        rows.append(row(f"{name}: seed GETs per chunk, 3 appliances", f"{v:.3f}",
                        f"{g.group(3)} (no cluster)", None, target_text=f"= {g.group(2)}"))
        rows[-1][5] = met(v, "<=", float(g.group(2)))
    return rows or None


def peer_link_rows(name, text):
    """tests/rack/peer_bench.py: one row per variant, image x frontend (B via iSCSI over a
    shaped link vs curl in the same round; the warm ceiling bounds the ratio). Older logs
    (one entry per image, shared NIC) still parse."""
    m = re.search(r"^peer-link-summary (\{.*\})$", text, re.M)
    if not m:
        return None
    s = json.loads(m.group(1))
    variants = s.get("variants")
    if variants is None:
        variants = [s[t] | {"image": t, "frontend": "shared"} for t in ("sample", "random")
                    if s.get(t)]
    where = {"shared": "shared NIC", "separate": "separate frontend"}
    rows = []
    for v in variants:
        fe = where.get(v["frontend"], v["frontend"])
        if v.get("reader") == "extents":
            fe += ", allocated extents read"
        rows.append(row(f"{name}: {v['image']} image, {fe}, {s['rate']} links",
                        f"{v['mbps_b']} MB/s (warm ceiling {v['mbps_warm']} MB/s, "
                        f"max {v['ceiling']:.2f}x)",
                        f"{v['mbps_curl']} MB/s (curl)", v["ratio"], ">=", s["target"]))
    return rows or None


def seed_rows(name, text):
    c = re.search(r"curl raw image \(baseline\)\s+" + NUM + " s", text)
    f = re.search(r"fetcher, 8 workers[^0-9]*\d+\s+" + NUM + r" s.*ratio " + NUM + "x", text)
    if not (c and f):
        return None
    return [row(f"{name}: cold image read via fetcher", f"{f.group(1)} s",
                f"{c.group(1)} s (curl)", float(f.group(2)))]


def evict_rows(name, text):
    rows, res = [], {}
    for m in re.finditer(r"^(\d+)\s+(s3-fifo|lru)\s+" + NUM + r"%\s+" + NUM + r"%", text, re.M):
        res.setdefault(m.group(1), {})[m.group(2)] = float(m.group(4))
    for boot, v in res.items():
        if "s3-fifo" in v and "lru" in v:
            rows.append(row(f"{name}: boot set {boot} hits during a scan", f"{v['s3-fifo']}%",
                            f"{v['lru']}% (LRU)", v["s3-fifo"] / v["lru"] if v["lru"] else None))
    return rows or None


def disk_rows(name, text):
    """bench_disk.c: "WHAT: BASELINE N UNIT | OURS N UNIT | ratio R (...target >= T)",
    the ratio without an "x" (generic() would miss it), the write rows longer than a
    cell."""
    rows = []
    num = lambda g: rf"(?P<{g}>\d+(?:\.\d+)?)"  # noqa: E731
    for m in re.finditer(r"^(?P<what>[^:\n]+):\s+(?P<bname>[a-z+_ ]+?)\s+" + num("b") +
                         r" (?P<bunit>MiB/s|IOPS)\s*\|\s*(?P<fname>[a-z+_]+)\s+" + num("f") +
                         r" (?P<funit>MiB/s|IOPS)\s*\|\s*ratio " + num("r") +
                         r"(?P<rest>[^\n]*?)target >= " + num("t"), text, re.M):
        extra = m.group("rest").strip(" (;")
        rows.append(row(f"{name}: {m.group('what').strip()}",
                        f"{m.group('f')} {m.group('funit')} ({m.group('fname')}" +
                        (f"; ratio {extra}" if extra else "") + ")",
                        f"{m.group('b')} {m.group('bunit')} ({m.group('bname')})",
                        float(m.group("r")), ">=", float(m.group("t"))))
    return rows or None


def store_open_rows(name, text):
    """bench_store_open.c: chunkstore_open() against find | wc -l (medians), lower is
    faster; no target. The last line is the tree's removal, not a figure."""
    f = re.search(r"baseline: find -type f \| wc -l\s+" + NUM + r" s\s+\(([^)]*)\)", text)
    o = re.search(r"chunkstore_open\(\)\s+" + NUM + r" s\s+\(([^)]*)\)", text)
    r = re.search(r"ratio open/find " + NUM + "x", text)
    n = re.search(r"store open: (\d+) chunk files", text)
    if not (f and o and r):
        return None
    what = f"chunkstore_open() of {n.group(1)} chunk files" if n else "chunkstore_open()"
    return [row(f"{name}: {what} (lower is faster)", f"{o.group(1)} s ({o.group(2)})",
                f"{f.group(1)} s (find | wc -l, {f.group(2)})", float(r.group(1)))]


def store_read_rows(name, text):
    """bench_store_read.c: per read size, each store row against that size's baseline
    row (pread of a raw file); the ratio as printed; no target."""
    rows, base = [], {}
    for m in re.finditer(r"^\s*(\d+) KiB\s+(.+?)\s+" + NUM + r" MiB/s\s+" + NUM +
                         r" reads/s\s+" + NUM + "x", text, re.M):
        size, what, mibs, ratio = m.group(1), m.group(2), m.group(3), float(m.group(5))
        if what.startswith("baseline"):
            base[size] = f"{mibs} MiB/s ({what.split(':', 1)[-1].strip()})"
            continue
        if size not in base:
            continue
        rows.append(row(f"{name}: {size} KiB reads, {what}", f"{mibs} MiB/s", base[size],
                        ratio))
    return rows or None


PARSERS = {"bench-cache-store-evict": evict_rows, "bench-storm": storm_rows, "bench-publish": publish_rows, "bench-peer": peer_rows,
           "bench-cluster-appliances": cluster_appliance_rows, "bench-seed": seed_rows,
           "bench-peer-link": peer_link_rows, "bench-disk": disk_rows,
           "bench-cache-store-open": store_open_rows, "bench-cache-store-read": store_read_rows}


def parse(name, text):
    rows = None
    if name in PARSERS:
        try:
            rows = PARSERS[name](name, text)
        except (ValueError, KeyError, TypeError):
            rows = None
    return rows or generic(name, text)


def run_target(target, out, timeout):
    log = os.path.join(out, f"{target}.log")
    t0 = time.monotonic()
    with open(log, "w") as f:
        try:
            p = subprocess.run(["make", "-s", "--no-print-directory", "-C", ROOT, target],
                               stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            f.write(f"\nreport.py: {target} timed out after {timeout} s\n")
            rc = "timeout"
    return rc, time.monotonic() - t0


def plot(out):
    """build/bench/storm.png from storm.json's sweep; returns a note for the report."""
    src = os.path.join(out, "storm.json")
    try:
        with open(src) as f:
            sweep = json.load(f)["sweep"]
    except (OSError, ValueError, KeyError):
        return "no storm.json: plot not drawn"
    by_k = {}
    for r in sweep:
        by_k.setdefault(r["racks"], {})[r["peers"]] = r
    rows = [(k, v[True], v[False]) for k, v in sorted(by_k.items())
            if True in v and False in v]
    if not rows:
        return "storm.json has no sweep: plot not drawn"
    dat = os.path.join(out, "storm.dat")
    with open(dat, "w") as f:
        f.write("# racks p50_peers p99_peers p50_nopeers p99_nopeers\n")
        for k, p, n in rows:
            f.write(f"{k} {p['p50_s']} {p['p99_s']} {n['p50_s']} {n['p99_s']}\n")
    vms = rows[0][1]["vms_per_rack"]
    png = os.path.join(out, "storm.png")
    script = f"""
set terminal pngcairo size 800,500
set output '{png}'
set title 'Boot storm: per-VM boot time vs racks ({vms} VMs per rack, cold cluster)'
set xlabel 'racks (K)'
set ylabel 'boot time (s)'
set xtics 1
set yrange [0:*]
set key top left
set grid
plot '{dat}' using 1:2 with linespoints lw 2 title 'p50, peers', \\
     '{dat}' using 1:3 with linespoints lw 2 dt 2 title 'p99, peers', \\
     '{dat}' using 1:4 with linespoints lw 2 title 'p50, no peers (seed only)', \\
     '{dat}' using 1:5 with linespoints lw 2 dt 2 title 'p99, no peers (seed only)'
"""
    p = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=60)
    if p.returncode:
        return f"gnuplot failed: {p.stderr.strip()[:300]}"
    return "![boot time vs racks](storm.png) (data: storm.dat)"


PAGE_REPORTING = "/sys/module/page_reporting/parameters/page_reporting_order"
# Above MAX_PAGE_ORDER (10 on x86-64): no free block is large enough to be reported.
PAGE_REPORTING_HELD = "11"


def page_reporting():
    """The page_reporting_order in force, or None when the kernel has no reporting."""
    try:
        with open(PAGE_REPORTING) as f:
            return f.read().strip()
    except OSError:
        return None


def set_page_reporting(order):
    with open(PAGE_REPORTING, "w") as f:
        f.write(order)


def page_reporting_note(order, held):
    if order is None:
        return "Free page reporting: not in this kernel."
    if held:
        return (f"Free page reporting: held for this run (page_reporting_order {order} raised "
                f"to {PAGE_REPORTING_HELD}, restored afterwards), so freed memory stayed with "
                "the guest as on a physical machine.")
    return (f"Free page reporting: on (page_reporting_order {order}): memory the guest frees "
            "goes back to the hypervisor and its next use costs a host fault, which new page "
            "cache (a cold read's chunk inserts) pays and curl to /dev/null does not. "
            "`make bench BENCH_HOLD_PAGE_REPORTING=1` holds it for a run.")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--only-report", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--hold-page-reporting", action="store_true",
                    default=os.environ.get("BENCH_HOLD_PAGE_REPORTING", "") not in ("", "0"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    order = page_reporting()
    held = args.hold_page_reporting and order is not None and not args.only_report
    status = {}
    try:
        if held:
            set_page_reporting(PAGE_REPORTING_HELD)
        for t in args.targets:
            if args.only_report:
                status[t] = ("not run", 0)
                continue
            print(f"report: {t} ...", flush=True)
            status[t] = run_target(t, args.out, args.timeout)
            rc, dt = status[t]
            print(f"report: {t} {'ok' if rc == 0 else f'FAILED ({rc})'} in {dt:.0f} s",
                  flush=True)
    finally:
        if held:
            set_page_reporting(order)
    table = [["benchmark", "figure", "baseline", "ratio", "target", "met?"]]
    for t in args.targets:
        log = os.path.join(args.out, f"{t}.log")
        try:
            with open(log, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        rc = status[t][0]
        if rc not in (0, "not run"):
            last = [l.strip() for l in text.splitlines() if l.strip()]
            table.append([t, f"FAILED (exit {rc}): `{last[-1][:100] if last else ''}`",
                          "—", "—", "—", "**failed**"])
            continue
        table.extend(parse(t, text))
    lines = ["# rackdisk benchmark report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} on {os.uname().nodename}, "
             f"{os.cpu_count()} CPUs. Raw output: `<target>.log` beside this file. Ratios "
             "are figure/baseline as each benchmark defines them.", "",
             page_reporting_note(order, held), ""]
    for i, r in enumerate(table):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        if i == 0:
            lines.append("|" + "---|" * len(r))
    lines += ["", "## Boot storm: boot time against the number of racks", "", plot(args.out),
              ""]
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"report: {path}")
    failed = [t for t, (rc, _) in status.items() if rc not in (0, "not run")]
    if failed:
        print(f"report: failed benchmarks: {' '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
