#!/usr/bin/python3
"""peer_bench.py - peer throughput over a shaped link, on the rack harness (tests/rack/rack.py).

The loopback variant (tests/bench/cluster_appliances.py) compares B's iSCSI path with
curl at memory speed, where tgtd + the initiator on two shared cores are the bottleneck.
In a rack, peers talk over a network link; this variant gives each appliance a NIC of
--rate (tc tbf, both ways; default 1gbit) and asks whether B's peer path keeps that link
as busy as curl does.

Two topologies (rack.py's frontend option):
  shared    one NIC per appliance carries both the peer transfers and the iSCSI traffic
            to its initiators. B's cold read sends the whole disk, zero chunks included,
            out of that NIC while curl's baseline moves only the non-zero chunks, so on
            an image with zero chunks the ratio is bounded by the topology, not the peer
            path (the warm ceiling shows the bound);
  separate  a storage-frontend network: traffic between an appliance and the initiator
            hosts is not shaped, peer/seed/Redis traffic is (like Ceph's public vs
            cluster networks). The ceiling is then the iSCSI path, not the link.
Each round checks from the qdiscs' byte counters (rack.Cluster.link_bytes) that B's cold
read took the intended way: with "shared" the disk went out through B's shaper; with
"separate" it went out through the unshaped frontend band while the peer bytes came in
through the shaper. With "separate", round 1 also measures the topology directly: curl
of the first chunks from A's peer listener from rack 1's initiator host (frontend,
unshaped) and from B (peer link, shaped).

Two readers (the optional third field of a variant):
  whole     B's initiator reads every block of the disk in order, zero chunks included;
            those never come from a peer, but they cross the iSCSI link and, being read
            in order, after the non-zero chunks before them: on the sample image the
            read is then peer time + zero-tail time, which curl's baseline never pays;
  extents   only the allocated extents GET LBA STATUS reports (the non-zero chunks,
            merged into runs), which is what `qemu-img convert` of the disk reads
            (write_extent_trace; tests/bench/cluster_appliances.py reads the same way).
Round 1 also prints how busy the machine's cores were during B's cold and warm reads
(/proc/stat): every host of the cluster shares them.

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

Variants (--variants, default sample:shared, sample:shared:extents, sample:separate,
sample:separate:extents, random:shared), each IMAGE:FRONTEND[:READER] with its own curl
baseline from the same round. Images: "sample", the harness's
sample image (scripts/make-sample-image.sh: text, random, repeated and free space;
--size-mb MiB, about half of it zero chunks), and "random", --size-mb MiB of pseudo-random
bytes (every chunk distinct and non-zero: the disk B serves is exactly the bytes curl
fetches, so the link bounds both the same way).

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
# How B's initiator reads the disk: "whole", every block in order, zero chunks included
# (a guest's dd); "extents", only the allocated extents that GET LBA STATUS reports,
# i.e. the non-zero chunks (what `qemu-img convert` of the disk reads).
READERS = ("whole", "extents")
DEFAULT_VARIANTS = ("sample:shared,sample:shared:extents,sample:separate,"
                    "sample:separate:extents,random:shared")


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


def write_extent_trace(path, image_id, manifest, read_size, depth):
    """An rdreplay trace reading only the allocated extents (runs of non-zero chunks), in
    order, in reads of at most read_size; read i ends at i + depth, so `depth` reads are
    in flight (the format of write_trace). Returns the bytes it reads."""
    cs, size = manifest["chunk_size"], manifest["size"]
    runs, start = [], None
    for i, h in enumerate(manifest["chunks"] + [None]):
        if h and start is None:
            start = i * cs
        elif not h and start is not None:
            runs.append((start, min(i * cs, size)))
            start = None
    n = total = 0
    with open(path, "w") as f:
        f.write(f"# rackdisk-trace 1\n# image {image_id} size {size}\n")
        for lo, hi in runs:
            for off in range(lo, hi, read_size):
                ln = min(read_size, hi - off)
                f.write(f"{n} {n} {n + depth} {off} {ln}\n")
                n += 1
                total += ln
    return total


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


def link_delta(before, after):
    return {w: {k: after[w][k] - before[w][k] for k in after[w]} for w in after}


def check_link(frontend, link, disk_bytes, peer_bytes):
    """B's cold read took the intended way through B's link (qdisc byte counters, headers
    included, so every bound is one-sided or loose). Returns a problem or None."""
    tx, rx = link["tx"], link["rx"]
    if frontend == "shared":
        if tx["frontend"] or rx["frontend"]:
            return f"shared frontend yet unshaped bytes counted: {link}"
        if tx["shaped"] < disk_bytes or rx["shaped"] < peer_bytes:
            return f"B's shaper carried less than the disk out / peer bytes in: {link}"
        return None
    if tx["frontend"] < disk_bytes:
        return f"the disk ({disk_bytes} B) did not go out through the frontend band: {link}"
    if rx["shaped"] < peer_bytes:
        return f"the peer bytes ({peer_bytes} B) did not come in through the shaper: {link}"
    # What B sends on the cluster network during the read: peer requests, ACKs, Redis.
    if tx["shaped"] > disk_bytes // 10:
        return f"iSCSI data seems to have gone through B's shaper: {link}"
    return None


def frontend_probe(c, a, b, chunks, work, nbytes=32 * MIB):
    """curl of A's first chunks (up to nbytes) from rack 1's initiator host and from B:
    {"initiator"|"peer": MB/s}. With frontend "separate" the first is unshaped."""
    part, n = [], 0
    for h, ln in chunks:
        if n >= nbytes:
            break
        part.append((h, ln))
        n += ln
    out = {}
    for who, host in (("initiator", c.initiators[1]), ("peer", b)):
        t, _ = curl_chunks(host, f"{a.addr}:{PEER_PORT}", part, work)
        out[who] = n / t / 1e6
    return out


def cpu_ticks():
    """(busy, total) jiffies of the whole machine from /proc/stat (every namespace shares
    the two cores: A, B, both tgtds, the initiator)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v)


def tcp_counters(host):
    """{RetransSegs, TCPTimeouts, TCPLossProbes}: host's namespace's TCP counters."""
    out = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = host.run("cat", f).stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            names, nums = head.split()[1:], vals.split()[1:]
            out.update(zip(names, (int(x) for x in nums)))
    return {k: out.get(k, 0) for k in ("RetransSegs", "TCPTimeouts", "TCPLossProbes")}


def busy_share(t0, t1):
    return (t1[0] - t0[0]) / max(1, t1[1] - t0[1])


def one_round(repo, tag, raw, frontend, reader, args, work, probe=False):
    image_id, manifest = load_manifest(repo, tag)
    chunks = distinct_chunks(manifest)
    unique = sum(n for _, n in chunks)
    trace = os.path.join(work, f"{tag}.{reader}.trace")
    if reader == "whole":
        write_trace(trace, image_id, manifest["size"], args.read_size, args.depth)
        read_bytes = manifest["size"]
    else:
        read_bytes = write_extent_trace(trace, image_id, manifest, args.read_size,
                                        args.depth)
    with Cluster(repo, racks=2, per_rack=1, seed_rate=args.seed_rate,
                 appliance_rate=args.rate, frontend=frontend,
                 extra_conf=args.extra_conf) as c:
        a, b = c.rack_appliances(1)[0], c.rack_appliances(2)[0]
        replay(c.initiators[1], trace, a.create_disk("warm-a", tag), timeout=args.timeout)
        fa = a.fetch_bytes()
        if fa["seed"] != unique:
            raise BenchError(f"A's seed bytes {fa['seed']} != image chunk bytes {unique}")
        t_curl, conns = curl_chunks(b, f"{a.addr}:{PEER_PORT}", chunks, work)
        probed = frontend_probe(c, a, b, chunks, work) if probe else None
        url = b.create_disk("cold-b", tag)
        before, link0 = b.fetch_bytes(), c.link_bytes(b)
        t0, tcp0 = cpu_ticks(), tcp_counters(a)
        cold = replay(c.initiators[2], trace, url, raw=raw, timeout=args.timeout)
        cpu_cold = busy_share(t0, cpu_ticks())
        tcp = {k: v - tcp0[k] for k, v in tcp_counters(a).items()}
        after, link = b.fetch_bytes(), link_delta(link0, c.link_bytes(b))
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
        problem = check_link(frontend, link, read_bytes, unique)
        if problem:
            raise BenchError(f"{tag}/{frontend}/{reader}: {problem}")
        t0 = cpu_ticks()
        warm = replay(c.initiators[2], trace, url, timeout=args.timeout)
        cpu_warm = busy_share(t0, cpu_ticks())
        fb = b.fetch_bytes()
        if fb["seed"] != 0 or fb["peer"] != unique:
            raise BenchError(f"B's warm re-read fetched: {fb}")
    return {"curl_s": t_curl, "curl_connections": conns, "b_s": cold["elapsed_s"],
            "b_login_s": cold["connect_s"], "warm_s": warm["elapsed_s"],
            "ratio": t_curl / cold["elapsed_s"], "ceiling": t_curl / warm["elapsed_s"],
            "b_bytes": d, "b_link": link, "probe": probed,
            "cpu_cold": cpu_cold, "cpu_warm": cpu_warm, "a_tcp": tcp,
            "b_peer_connections": conns_b, "b_readahead": readahead,
            "b_waited": waited, "b_socket_requests": requests,
            "chunks": len(chunks), "unique_bytes": unique,
            "disk_bytes": manifest["size"], "read_bytes": read_bytes}


def parse_conf(items):
    """--conf SECTION.KEY=VALUE lines as {section: ["key = value"]} for rack.Cluster."""
    extra = {}
    for kv in items:
        key, eq, value = kv.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not eq or not dot or not sec or not name.strip() or "\n" in kv:
            sys.exit(f"peer_bench: bad --conf {kv!r} (SECTION.KEY=VALUE, e.g. "
                     f"cluster.readahead=32)")
        extra.setdefault(sec, []).append(f"{name.strip()} = {value.strip()}")
    return extra


def parse_variants(text):
    out = []
    for v in (x.strip() for x in text.split(",") if x.strip()):
        tag, frontend, reader = (v.split(":") + ["", ""])[:3]
        frontend, reader = frontend or "shared", reader or "whole"
        if (tag not in ("sample", "random") or frontend not in rack.FRONTENDS or
                reader not in READERS or v.count(":") > 2):
            sys.exit(f"peer_bench: bad variant {v!r} (IMAGE:FRONTEND[:READER], image "
                     f"sample|random, frontend {'|'.join(rack.FRONTENDS)}, reader "
                     f"{'|'.join(READERS)})")
        if (tag, frontend, reader) not in out:
            out.append((tag, frontend, reader))
    if not out:
        sys.exit("peer_bench: no variant")
    return out


def report(tag, frontend, reader, rounds, args):
    """Prints one variant's figures; returns its summary entry."""
    r0 = rounds[0]
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("curl_s", "b_s", "warm_s", "ratio", "ceiling")}
    u = r0["unique_bytes"]
    mbps = {k: u / med[k] / 1e6 for k in ("curl_s", "b_s", "warm_s")}
    where = ("shared NIC: iSCSI to the initiator and peer traffic on one link" if
             frontend == "shared" else
             "separate frontend: iSCSI to the initiator unshaped, peer traffic on the link")
    how = ("the whole disk, zero chunks included" if reader == "whole" else
           f"its allocated extents ({r0['read_bytes'] / 1e6:.1f} MB, as qemu-img convert "
           f"reads it)")
    print(f"{tag} image, {where}; B's initiator reads {how}: {r0['chunks']} distinct "
          f"non-zero chunks = {u / 1e6:.1f} MB of a {r0['disk_bytes'] / MIB:.0f} MiB disk "
          f"(median of {len(rounds)}):")
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
    lk = r0["b_link"]
    print(f"  B's link during the cold read (tc counters, round 1): out shaped "
          f"{lk['tx']['shaped'] / 1e6:.1f} MB, out unshaped frontend "
          f"{lk['tx']['frontend'] / 1e6:.1f} MB; in shaped {lk['rx']['shaped'] / 1e6:.1f} MB, "
          f"in unshaped frontend {lk['rx']['frontend'] / 1e6:.1f} MB")
    if r0["probe"]:
        print(f"  topology check (round 1): curl from A's peer listener to rack 1's "
              f"initiator host {r0['probe']['initiator']:.1f} MB/s (frontend), to B "
              f"{r0['probe']['peer']:.1f} MB/s (peer link, {args.rate})")
    print("  A's TCP during B's cold read (round 1): " +
          ", ".join(f"{k} {v}" for k, v in r0["a_tcp"].items()))
    ncpu = os.cpu_count()
    print(f"  machine CPU busy (all hosts share {ncpu} cores), round 1: "
          f"{r0['cpu_cold'] * 100:.0f}% during B's cold read, {r0['cpu_warm'] * 100:.0f}% "
          f"during the warm re-read ({r0['cpu_cold'] * ncpu * r0['b_s']:.2f} and "
          f"{r0['cpu_warm'] * ncpu * r0['warm_s']:.2f} CPU-seconds); near 100% means the "
          f"read is CPU-bound here, not link-bound")
    print(f"  iSCSI ceiling: B re-reading warm {mbps['warm_s']:.1f} MB/s of chunk bytes "
          f"({med['warm_s']:.3f} s for the whole disk): the ratio can be at most "
          f"{med['ceiling']:.2f}x")
    return {k: round(v, 4) for k, v in med.items()} | {
        "image": tag, "frontend": frontend, "reader": reader,
        "mbps_b": round(mbps["b_s"], 1), "mbps_curl": round(mbps["curl_s"], 1),
        "mbps_warm": round(mbps["warm_s"], 1), "chunks": r0["chunks"],
        "cpu_busy_cold": round(r0["cpu_cold"], 3), "cpu_busy_warm": round(r0["cpu_warm"], 3),
        "unique_bytes": u, "disk_bytes": r0["disk_bytes"], "read_bytes": r0["read_bytes"],
        "b_link": lk,
        "probe_mbps": ({k: round(v, 1) for k, v in r0["probe"].items()}
                       if r0["probe"] else None),
        "ratios": [round(r["ratio"], 4) for r in rounds]}


def main():
    ap = argparse.ArgumentParser(description="peer throughput over shaped links (netns)")
    ap.add_argument("--rate", default=os.environ.get("BENCH_PEER_RATE", "1gbit"),
                    help="each appliance's link, both ways (tc tbf; default 1gbit)")
    ap.add_argument("--seed-rate", default="200mbit", help="seed uplink (tc tbf)")
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--chunk-size", default="1M")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help="comma list of IMAGE:FRONTEND[:READER], image sample|random, "
                    "frontend shared|separate, reader whole|extents (default "
                    f"{DEFAULT_VARIANTS})")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--read-size", type=int, default=MIB, help="initiator read size, bytes")
    ap.add_argument("--depth", type=int, default=8, help="initiator reads in flight")
    ap.add_argument("--conf", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="an extra rackdiskd.conf line for every appliance (repeatable), "
                         "e.g. cluster.readahead=32")
    ap.add_argument("--timeout", type=int, default=300, help="per read of a disk, seconds")
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    args.extra_conf = parse_conf(args.conf)
    if not 1 <= args.rounds <= 20 or not 1 <= args.depth <= 64 or args.read_size <= 0:
        sys.exit("peer_bench: --rounds 1..20, --depth 1..64, --read-size > 0")
    rack.rate_bytes(args.rate)
    rack.bench_prepare("peer_bench")
    work = tempfile.mkdtemp(prefix=f"rdrack-{os.getpid()}-peerbench", dir="/tmp")
    summary = {"rate": args.rate, "seed_rate": args.seed_rate, "rounds": args.rounds,
               "size_mb": args.size_mb, "target": 0.8, "variants": []}
    try:
        repo, raws = prepare(work, args.size_mb, args.chunk_size,
                             list(dict.fromkeys(t for t, _, _ in variants)))
        print(f"peer throughput over a {args.rate} link per appliance (tc tbf both ways), "
              f"2 racks x 1 appliance, seed {args.seed_rate}; {args.rounds} round(s), fresh "
              f"cluster each; B's initiator: {args.read_size // 1024} KiB reads, "
              f"{args.depth} in flight")
        for tag, frontend, reader in variants:
            rounds = []
            for n in range(args.rounds):
                r = one_round(repo, tag, raws[tag], frontend, reader, args, work,
                              probe=(frontend == "separate" and n == 0))
                rounds.append(r)
                mb = lambda t: r["unique_bytes"] / t / 1e6  # noqa: E731
                print(f"  {tag}/{frontend}/{reader} round {n + 1}: curl {r['curl_s']:.3f} s "
                      f"{mb(r['curl_s']):.1f} MB/s ({r['curl_connections']} connection(s)); "
                      f"B cold {r['b_s']:.3f} s {mb(r['b_s']):.1f} MB/s; "
                      f"B warm {r['warm_s']:.3f} s {mb(r['warm_s']):.1f} MB/s; "
                      f"ratio {r['ratio']:.2f}x", flush=True)
            summary["variants"].append(report(tag, frontend, reader, rounds, args))
        print("peer-link-summary " + json.dumps(summary))
    except (BenchError, RackError) as e:
        sys.exit(f"peer_bench: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
