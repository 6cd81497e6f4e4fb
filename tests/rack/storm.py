#!/usr/bin/python3
"""storm.py - boot-storm benchmark on the rack harness (tests/rack/rack.py).

M VMs per rack across K racks replay one boot trace at once (rdreplay, libiscsi, from the
rack's initiator namespace), each against its own disk cloned from the same image and
created through its rack appliance's CLI, starting from a cold cluster (fresh appliances,
empty caches, empty Redis). Reported:
  - per-VM completion time (rdreplay's elapsed time, first read issued to last read done;
    the iSCSI login is not counted), p50 and p99 (nearest rank);
  - bytes by source summed over the appliances (/metrics
    rackdisk_chunk_fetch_bytes_total{source=seed|peer|local});
  - bytes from local caches: the chunk bytes the VMs read (VMs x unique bytes below) less
    what their appliances fetched from the seed and from peers, i.e. chunks a VM found
    already in its appliance's cache (the tgt module serves those without rackdiskd, so
    the fetch counters' "local" source sees only misses that raced a fill);
  - seed bytes / unique bytes of the trace, where unique bytes = the distinct non-zero
    chunks (by hash) that the trace's reads touch, times their lengths (target <= 1.05).
The same storm is run without the directory (no [cluster] redis: every appliance pulls
from the seed alone), the "no peers" baseline. Then boot time against the number of racks
(K = 1..SWEEP with --sweep-vms VMs per rack), with and without peers, for the plot.

Trace and image: $STORM_TRACE and $STORM_IMAGE, else build/boot/boot.trace and
build/boot/boot.raw when both exist, else a synthetic trace (tests/rack/gentrace.py) over
a sample image (scripts/make-sample-image.sh, --size-mb).

Output: human-readable lines, a last line `storm-summary {json}`, and --json FILE
(default build/bench/storm.json) with every run, which tests/bench/report.py plots.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import rack  # noqa: E402
from rack import BUILD, RACKDISK, RDREPLAY, ROOT, Cluster, RackError  # noqa: E402

MIB = 1 << 20
TAG = "boot"


def load_trace(path):
    """[(offset, length)] of a trace file (format: tests/rack/replay.c)."""
    reads = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            v = s.split()
            if len(v) != 5 or not all(x.isdigit() for x in v):
                raise ValueError(f"{path}:{n}: bad trace line")
            reads.append((int(v[3]), int(v[4])))
    return reads


def load_manifest(repo, tag):
    with open(os.path.join(repo, "tags", tag)) as f:
        image_id = f.read().strip()
    with open(os.path.join(repo, "manifests", image_id + ".json")) as f:
        return image_id, json.load(f)


def trace_chunks(reads, manifest):
    """{hash: length} of the distinct non-zero chunks the reads touch."""
    cs, size, hashes = manifest["chunk_size"], manifest["size"], manifest["chunks"]
    out = {}
    for off, length in reads:
        for i in range(off // cs, min(len(hashes) - 1, (off + length - 1) // cs) + 1):
            if hashes[i]:
                out[hashes[i]] = min(cs, size - i * cs)
    return out


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def prepare(work, size_mb, chunk_size):
    """(trace, raw, repo, synthetic) with the image published under TAG."""
    trace = os.environ.get("STORM_TRACE")
    raw = os.environ.get("STORM_IMAGE")
    boot = os.path.join(BUILD, "boot")
    if not (trace and raw) and os.path.exists(os.path.join(boot, "boot.trace")) and \
            os.path.exists(os.path.join(boot, "boot.raw")):
        trace, raw = os.path.join(boot, "boot.trace"), os.path.join(boot, "boot.raw")
    repo = os.path.join(work, "repo")
    synthetic = not (trace and raw)
    if synthetic:
        raw = os.path.join(work, "image.raw")
        rack.run(["bash", os.path.join(ROOT, "scripts", "make-sample-image.sh"), raw,
                  str(size_mb), "1"], timeout=300)
    rack.run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", TAG,
              "--chunk-size", chunk_size], timeout=600)
    if synthetic:
        image_id, _ = load_manifest(repo, TAG)
        trace = os.path.join(work, "boot.trace")
        rack.run([sys.executable, os.path.join(HERE, "gentrace.py"), raw, trace,
                  "--image-id", image_id], timeout=300)
    return trace, raw, repo, synthetic


def storm(repo, trace, raw, racks, vms, per_rack, directory, seed_rate, readahead=None,
          verify=False, timeout=300):
    """One cold storm; returns its figures (and the cluster's seed GETs per chunk)."""
    with Cluster(repo, racks=racks, per_rack=per_rack, seed_rate=seed_rate,
                 directory=directory, readahead=readahead) as c:
        jobs = []
        for k in range(1, racks + 1):
            apps = c.rack_appliances(k)
            for v in range(vms):
                a = apps[v % len(apps)]
                jobs.append((k, a, a.create_disk(f"vm{k}-{v}", TAG)))
        cmd = [RDREPLAY, "--timeout", str(timeout)] + (["--verify", raw] if verify else [])
        t0 = time.monotonic()
        procs = [c.initiators[k].popen(*cmd, trace, url, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE) for k, _, url in jobs]
        results = []
        for (k, a, url), p in zip(jobs, procs):
            try:
                out, err = p.communicate(timeout=timeout + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            try:
                r = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise RackError(f"rdreplay on {url} (exit {p.returncode}): "
                                f"{err.decode()[-2000:]}\n{a.log_text()}")
            r.update(rack=k, appliance=a.name, url=url, exit=p.returncode,
                     stderr=err.decode()[-1000:])
            results.append(r)
        wall = time.monotonic() - t0
        src = {"seed": 0, "peer": 0, "local": 0}
        for a in c.appliances:
            for s, n in a.fetch_bytes().items():
                src[s] += n
        gets = c.seed_chunk_gets()
    times = [r["elapsed_s"] for r in results]
    return {"racks": racks, "vms_per_rack": vms, "appliances_per_rack": per_rack,
            "peers": directory, "p50_s": pct(times, 50), "p99_s": pct(times, 99),
            "max_s": max(times), "wall_s": wall, "bytes": src,
            "seed_gets": sum(gets.values()), "seed_distinct": len(gets),
            "failed": sum(1 for r in results if r["exit"] != 0 or not r["completed"]),
            "mismatches": sum(r["mismatches"] for r in results),
            "reads": [r["reads"] for r in results], "vms": results, "seed_gets_by_chunk": gets}


def show(label, r, unique):
    b = r["bytes"]
    cached = max(0, len(r["vms"]) * unique - b["seed"] - b["peer"])
    print(f"  {label:<12} p50 {r['p50_s']:7.3f} s  p99 {r['p99_s']:7.3f} s   "
          f"seed {b['seed'] / MIB:7.1f} MiB  peer {b['peer'] / MIB:7.1f} MiB  "
          f"local cache {cached / MIB:7.1f} MiB   seed/unique {b['seed'] / unique:.3f}   "
          f"seed GETs {r['seed_gets']} of {r['seed_distinct']} chunks"
          + (f"   FAILED VMs {r['failed']}" if r["failed"] else ""))


def main():
    ap = argparse.ArgumentParser(description="boot-storm benchmark (network namespaces)")
    ap.add_argument("--racks", type=int, default=4, help="K (default 4)")
    ap.add_argument("--vms", type=int, default=4, help="M VMs per rack (default 4)")
    ap.add_argument("--per-rack", type=int, default=1, help="appliances per rack")
    ap.add_argument("--seed-rate", default="200mbit", help="seed uplink (tc tbf)")
    ap.add_argument("--sweep", type=int, default=4, help="K = 1..SWEEP; 0: no sweep")
    ap.add_argument("--sweep-vms", type=int, default=2)
    ap.add_argument("--size-mb", type=int, default=128, help="synthetic image size")
    ap.add_argument("--chunk-size", default="1M")
    ap.add_argument("--readahead", type=int, default=None,
                    help="[seed] readahead of the appliances (default: rackdiskd's)")
    ap.add_argument("--verify", action="store_true", help="rdreplay --verify every read")
    ap.add_argument("--timeout", type=int, default=300, help="per replay, seconds")
    ap.add_argument("--json", default=os.path.join(BUILD, "bench", "storm.json"))
    args = ap.parse_args()
    rack.bench_prepare("storm")
    work = tempfile.mkdtemp(prefix=f"rdrack-{os.getpid()}-storm", dir="/tmp")
    try:
        trace, raw, repo, synthetic = prepare(work, args.size_mb, args.chunk_size)
        reads = load_trace(trace)
        image_id, manifest = load_manifest(repo, TAG)
        chunks = trace_chunks(reads, manifest)
        unique = sum(chunks.values())
        if not unique:
            sys.exit("storm: the trace touches no data")
        print(f"boot storm: {args.racks} racks x {args.vms} VMs ({args.per_rack} appliance(s) "
              f"per rack), seed uplink {args.seed_rate}, "
              f"{'synthetic trace (gentrace.py)' if synthetic else trace}: {len(reads)} reads, "
              f"{sum(n for _, n in reads) / MIB:.1f} MiB read; unique {len(chunks)} chunks = "
              f"{unique / MIB:.1f} MiB (chunk {manifest['chunk_size']} B)")
        kw = dict(per_rack=args.per_rack, seed_rate=args.seed_rate, readahead=args.readahead,
                  verify=args.verify, timeout=args.timeout)
        main_peers = storm(repo, trace, raw, args.racks, args.vms, directory=True, **kw)
        main_none = storm(repo, trace, raw, args.racks, args.vms, directory=False, **kw)
        show("peers", main_peers, unique)
        show("no peers", main_none, unique)
        nora = None
        if args.readahead is None:
            # Readahead fetches chunks past the end of a sequential run that the trace
            # never reads; without it the seed/unique ratio shows the directory alone.
            nora = storm(repo, trace, raw, args.racks, args.vms, directory=True,
                         **dict(kw, readahead=0))
            show("peers, readahead 0", nora, unique)
        print(f"  seed/unique {main_peers['bytes']['seed'] / unique:.3f} (target <= 1.05; "
              f"baseline no peers {main_none['bytes']['seed'] / unique:.3f}); "
              f"p50 boot {main_peers['p50_s']:.3f} s vs {main_none['p50_s']:.3f} s no peers")
        sweep = []
        for k in range(1, args.sweep + 1):
            for d in (True, False):
                r = storm(repo, trace, raw, k, args.sweep_vms, directory=d, **kw)
                sweep.append(r)
                show(f"K={k} {'peers' if d else 'no-peers'}", r, unique)
        summary = {
            "racks": args.racks, "vms_per_rack": args.vms, "seed_rate": args.seed_rate,
            "trace": "synthetic" if synthetic else trace, "trace_reads": len(reads),
            "unique_chunks": len(chunks), "unique_bytes": unique,
            "peers": {k: v for k, v in main_peers.items() if k not in ("vms",
                                                                        "seed_gets_by_chunk")},
            "no_peers": {k: v for k, v in main_none.items() if k not in ("vms",
                                                                          "seed_gets_by_chunk")},
            "seed_over_unique": main_peers["bytes"]["seed"] / unique,
            "seed_over_unique_no_peers": main_none["bytes"]["seed"] / unique,
            "seed_over_unique_readahead0": nora["bytes"]["seed"] / unique if nora else None,
            "sweep": [{k: r[k] for k in ("racks", "vms_per_rack", "peers", "p50_s", "p99_s",
                                         "bytes", "failed")} for r in sweep],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print("storm-summary " + json.dumps({k: summary[k] for k in (
            "seed_over_unique", "seed_over_unique_no_peers", "seed_over_unique_readahead0")
            if summary[k] is not None} | {
            "p50_s": main_peers["p50_s"], "p99_s": main_peers["p99_s"],
            "p50_s_no_peers": main_none["p50_s"], "p99_s_no_peers": main_none["p99_s"]}))
        failed = main_peers["failed"] + main_none["failed"] + (nora["failed"] if nora else 0) + sum(r["failed"] for r in sweep)
        if failed:
            sys.exit(f"storm: {failed} replays failed")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
