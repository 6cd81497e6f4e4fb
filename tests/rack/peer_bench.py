#!/usr/bin/python3
"""peer_bench.py - peer throughput over a shaped link, on the rack harness (tests/rack/rack.py).

The loopback variant (tests/bench/cluster_appliances.py) compares B's iSCSI path with
curl at memory speed, where tgtd + the initiator on two shared cores are the bottleneck.
In a rack, peers talk over a network link; this variant gives each appliance a NIC of
--rate (tc tbf, both ways; default 1gbit) and asks whether B's peer path keeps that link
as busy as curl does.

Cluster: 2 racks x 1 appliance (A = r1a1, B = r2a1), Redis directory, seed uplink
--seed-rate (the harness default, 200mbit), appliance links shaped at --rate. Per round
and per image, a fresh cluster (so B's cache and Redis start empty):
  1. warm A: an initiator in rack 1 reads a disk of the image whole (rdreplay, sequential
     trace); A's seed bytes must equal the image's distinct non-zero chunk bytes;
  2. baseline: curl in B's namespace fetches every distinct non-zero chunk from A's peer
     listener (/v1/chunks/<hash>, the cluster token as bearer), in image order, on one
     keep-alive connection (checked: curl reports one connect), bodies to /dev/null.
     Time = the sum of curl's per-transfer time_total (process start not counted);
  3. B cold: an initiator in rack 2 reads a fresh disk of the image on B whole, through
     iSCSI (rdreplay: sequential --read-size reads, --depth in flight, --verify against
     the raw image). Time = rdreplay's elapsed_s (first read to last; the login is not
     counted). Sanity, not timing: B's seed bytes are 0 and its peer bytes equal the
     distinct non-zero chunk bytes;
  4. B warm: the same read again (every chunk local): the iSCSI ceiling. The read moves
     the whole disk, zero chunks included, over B's shaped link to the initiator, so
     curl_time / warm_time bounds the ratio.
MB/s = distinct non-zero chunk bytes / time, for all three. Ratio = curl_time / B_cold_time
(target >= 0.8x), median over --rounds rounds (default 2).

Images (--images, default both): "sample", the harness's sample image
(scripts/make-sample-image.sh: text, random, repeated and free space; --size-mb MiB), and
"random", --size-mb MiB of pseudo-random bytes (every chunk distinct and non-zero: the
disk B serves is exactly the bytes curl fetches, so the link bounds both the same way).

Output: human-readable lines and a last line `peer-link-summary {json}` (parsed by
tests/bench/report.py). Exit 1 when a read fails or a sanity check does not hold.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import rack  # noqa: E402
from rack import PEER_PORT, RACKDISK, RDREPLAY, ROOT, TOKEN, Cluster, RackError  # noqa: E402

MIB = 1 << 20


class BenchError(RuntimeError):
    pass


def load_manifest(repo, tag):
    with open(os.path.join(repo, "tags", tag)) as f:
        image_id = f.read().strip()
    with open(os.path.join(repo, "manifests", image_id + ".json")) as f:
        return image_id, json.load(f)


def distinct_chunks(manifest):
    """[(hash, length)] of the distinct non-zero chunks, in image order."""
    cs, size = manifest["chunk_size"], manifest["size"]
    seen, out = set(), []
    for i, h in enumerate(manifest["chunks"]):
        if h and h not in seen:
            seen.add(h)
            out.append((h, min(cs, size - i * cs)))
    return out


def write_trace(path, image_id, size, read_size, depth):
    """A sequential whole-disk trace in rdreplay's format: read i starts at i and ends at
    i + depth, so rdreplay keeps `depth` reads in flight (tests/rack/replay.c)."""
    with open(path, "w") as f:
        f.write(f"# rackdisk-trace 1\n# image {image_id} size {size}\n")
        for i, off in enumerate(range(0, size, read_size)):
            f.write(f"{i} {i} {i + depth} {off} {min(read_size, size - off)}\n")


def prepare(work, size_mb, chunk_size, images):
    """{tag: raw path}, published under tag in work/repo."""
    repo = os.path.join(work, "repo")
    raws = {}
    for tag in images:
        raw = os.path.join(work, f"{tag}.raw")
        if tag == "sample":
            rack.run(["bash", os.path.join(ROOT, "scripts", "make-sample-image.sh"), raw,
                      str(size_mb), "1"], timeout=300)
        else:
            rng = random.Random(5)
            with open(raw, "wb") as f:
                for _ in range(size_mb):
                    f.write(rng.randbytes(MIB))
        rack.run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", tag,
                  "--chunk-size", chunk_size], timeout=600)
        raws[tag] = raw
    return repo, raws


def replay(host, trace, url, raw=None, timeout=300):
    cmd = [RDREPLAY, "--timeout", str(timeout)] + (["--verify", raw] if raw else [])
    p = host.run(*cmd, trace, url, timeout=timeout + 30, check=False)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        r = None
    if p.returncode or not r or not r.get("completed") or r.get("mismatches"):
        raise BenchError(f"rdreplay {url}: exit {p.returncode} {p.stdout[-500:]} "
                         f"{p.stderr[-1500:]}")
    return r


def curl_chunks(host, peer, chunks, workdir):
    """curl in host's namespace fetching every chunk from peer on one keep-alive
    connection. Returns (seconds, connections): seconds = sum of time_total."""
    cfg = os.path.join(workdir, "curl.cfg")
    with open(cfg, "w") as f:
        f.write(f'header = "Authorization: Bearer {TOKEN}"\nfail\nsilent\nshow-error\n'
                'write-out = "%{num_connects} %{time_total}\\n"\n')
        for h, _ in chunks:
            f.write(f'url = "http://{peer}/v1/chunks/{h}"\noutput = "/dev/null"\n')
    p = host.run("curl", "--config", cfg, timeout=600, check=False)
    if p.returncode:
        raise BenchError(f"curl from {host.name}: exit {p.returncode}: {p.stderr[-500:]}")
    rows = [l.split() for l in p.stdout.split("\n") if l.strip()]
    if len(rows) != len(chunks):
        raise BenchError(f"curl: {len(rows)} transfers reported for {len(chunks)} chunks")
    return sum(float(t) for _, t in rows), sum(int(c) for c, _ in rows)


def one_round(repo, tag, raw, args, work):
    image_id, manifest = load_manifest(repo, tag)
    chunks = distinct_chunks(manifest)
    unique = sum(n for _, n in chunks)
    trace = os.path.join(work, f"{tag}.trace")
    write_trace(trace, image_id, manifest["size"], args.read_size, args.depth)
    with Cluster(repo, racks=2, per_rack=1, seed_rate=args.seed_rate,
                 appliance_rate=args.rate) as c:
        a, b = c.rack_appliances(1)[0], c.rack_appliances(2)[0]
        replay(c.initiators[1], trace, a.create_disk("warm-a", tag), timeout=args.timeout)
        fa = a.fetch_bytes()
        if fa["seed"] != unique:
            raise BenchError(f"A's seed bytes {fa['seed']} != image chunk bytes {unique}")
        t_curl, conns = curl_chunks(b, f"{a.addr}:{PEER_PORT}", chunks, work)
        url = b.create_disk("cold-b", tag)
        before = b.fetch_bytes()
        cold = replay(c.initiators[2], trace, url, raw=raw, timeout=args.timeout)
        after = b.fetch_bytes()
        m = b.metrics()
        conns_b = int(m.get("rackdisk_peer_client_connections_total", 0))
        readahead = int(m.get("rackdisk_fetch_readahead_total", 0))
        # How far readahead ran ahead of the reader: the reader's misses (FETCHes) that
        # joined a fill already under way waited for it; those that found the chunk had
        # only missed the module's view of the store.
        waited = int(m.get("rackdisk_fetch_coalesced_total", 0))
        requests = int(m.get("rackdisk_fetch_socket_requests_total", 0))
        d = {s: after[s] - before[s] for s in after}
        if d["seed"] != 0 or d["peer"] != unique:
            raise BenchError(f"B's cold read: seed {d['seed']} B (want 0), peer {d['peer']} "
                             f"B (want {unique})")
        warm = replay(c.initiators[2], trace, url, timeout=args.timeout)
        fb = b.fetch_bytes()
        if fb["seed"] != 0 or fb["peer"] != unique:
            raise BenchError(f"B's warm re-read fetched: {fb}")
    return {"curl_s": t_curl, "curl_connections": conns, "b_s": cold["elapsed_s"],
            "b_login_s": cold["connect_s"], "warm_s": warm["elapsed_s"],
            "ratio": t_curl / cold["elapsed_s"], "ceiling": t_curl / warm["elapsed_s"],
            "b_bytes": d, "b_peer_connections": conns_b, "b_readahead": readahead,
            "b_waited": waited, "b_socket_requests": requests,
            "chunks": len(chunks), "unique_bytes": unique,
            "disk_bytes": manifest["size"]}


def main():
    ap = argparse.ArgumentParser(description="peer throughput over shaped links (netns)")
    ap.add_argument("--rate", default=os.environ.get("BENCH_PEER_RATE", "1gbit"),
                    help="each appliance's link, both ways (tc tbf; default 1gbit)")
    ap.add_argument("--seed-rate", default="200mbit", help="seed uplink (tc tbf)")
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--chunk-size", default="1M")
    ap.add_argument("--images", default="sample,random",
                    help="comma list of sample, random (default both)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--read-size", type=int, default=MIB, help="initiator read size, bytes")
    ap.add_argument("--depth", type=int, default=8, help="initiator reads in flight")
    ap.add_argument("--timeout", type=int, default=300, help="per read of a disk, seconds")
    args = ap.parse_args()
    images = [x for x in args.images.split(",") if x]
    if not images or any(x not in ("sample", "random") for x in images):
        sys.exit("peer_bench: --images takes sample and/or random")
    if not 1 <= args.rounds <= 20 or not 1 <= args.depth <= 64 or args.read_size <= 0:
        sys.exit("peer_bench: --rounds 1..20, --depth 1..64, --read-size > 0")
    rack.rate_bytes(args.rate)
    rack.bench_prepare("peer_bench")
    work = tempfile.mkdtemp(prefix=f"rdrack-{os.getpid()}-peerbench", dir="/tmp")
    summary = {"rate": args.rate, "seed_rate": args.seed_rate, "rounds": args.rounds,
               "size_mb": args.size_mb, "target": 0.8}
    try:
        repo, raws = prepare(work, args.size_mb, args.chunk_size, images)
        print(f"peer throughput over a {args.rate} link per appliance (tc tbf both ways), "
              f"2 racks x 1 appliance, seed {args.seed_rate}; {args.rounds} round(s), fresh "
              f"cluster each; B's initiator: {args.read_size // 1024} KiB reads, "
              f"{args.depth} in flight")
        for tag in images:
            rounds = []
            for n in range(args.rounds):
                r = one_round(repo, tag, raws[tag], args, work)
                rounds.append(r)
                mb = lambda t: r["unique_bytes"] / t / 1e6  # noqa: E731
                print(f"  {tag} round {n + 1}: curl {r['curl_s']:.3f} s "
                      f"{mb(r['curl_s']):.1f} MB/s ({r['curl_connections']} connection(s)); "
                      f"B cold {r['b_s']:.3f} s {mb(r['b_s']):.1f} MB/s; "
                      f"B warm {r['warm_s']:.3f} s {mb(r['warm_s']):.1f} MB/s; "
                      f"ratio {r['ratio']:.2f}x")
            r0 = rounds[0]
            med = {k: statistics.median(r[k] for r in rounds)
                   for k in ("curl_s", "b_s", "warm_s", "ratio", "ceiling")}
            u = r0["unique_bytes"]
            mbps = {k: u / med[k] / 1e6 for k in ("curl_s", "b_s", "warm_s")}
            print(f"{tag} image: {r0['chunks']} distinct non-zero chunks = {u / 1e6:.1f} MB "
                  f"of a {r0['disk_bytes'] / MIB:.0f} MiB disk (median of {args.rounds}):")
            print(f"  B via iSCSI from A over the link: {mbps['b_s']:8.1f} MB/s  "
                  f"({med['b_s']:.3f} s; peer {r0['b_bytes']['peer']} B, seed 0 B)")
            print(f"  baseline curl from B's netns:     {mbps['curl_s']:8.1f} MB/s  "
                  f"({med['curl_s']:.3f} s, one keep-alive connection, bodies to /dev/null)")
            print(f"  ratio {med['ratio']:.2f}x (target >= 0.8x; rounds "
                  f"{', '.join('%.2f' % r['ratio'] for r in rounds)})")
            print(f"  context: B's peer client made {r0['b_peer_connections']} connection(s), "
                  f"{r0['b_readahead']} readahead fills for {r0['chunks']} chunks; the reader "
                  f"waited on {r0['b_waited']} fills under way; {r0['b_socket_requests']} "
                  f"fetch-socket requests (round 1)")
            print(f"  iSCSI ceiling: B re-reading warm {mbps['warm_s']:.1f} MB/s of chunk bytes "
                  f"({med['warm_s']:.3f} s for the whole disk): the ratio can be at most "
                  f"{med['ceiling']:.2f}x")
            summary[tag] = {k: round(v, 4) for k, v in med.items()} | {
                "mbps_b": round(mbps["b_s"], 1), "mbps_curl": round(mbps["curl_s"], 1),
                "mbps_warm": round(mbps["warm_s"], 1), "chunks": r0["chunks"],
                "unique_bytes": u, "disk_bytes": r0["disk_bytes"],
                "ratios": [round(r["ratio"], 4) for r in rounds]}
        print("peer-link-summary " + json.dumps(summary))
    except (BenchError, RackError) as e:
        sys.exit(f"peer_bench: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
