"""iscsi_cold.py [--size-mib N] [--rounds N] [--workers N] [--readahead N] [--depth N] [--perf F]
[--seed-rate RATE] [--variants loopback,limited] [--tgtd-in-service]: cold whole-disk
sequential read through iSCSI from an empty cache, against curl downloading the raw image
from the same nginx over the same link (issue 4 target: <= 1.5x curl's time).

A realistic image (tests/bench/bench_publish_gen.py: random, text, zero and repeated
extents) is published with 1 MiB chunks into a repository that nginx serves, the raw file
beside it. Each round starts a fresh appliance (rackdiskd + tgtd, empty cache), creates
a disk and reads it whole with `qemu-img bench` (1 MiB sequential reads at depth N, the
shape of a guest's sequential read), then once more warm. curl fetches the raw file from
the same nginx in the same round. Both readers discard what they read (qemu-img bench
keeps it in memory, curl writes to /dev/null): neither pays for a destination file.

--tgtd-in-service: a fresh tgtd's first reads fault in the heap that then holds its
command buffers (tgt allocates one per command; rackdiskd's malloc settings keep it mapped
afterwards), a cost an appliance in service has paid long ago: ~0.25 s of tgtd CPU for this
image with 4 KiB pages, little with the transparent huge pages rackdiskd asks for. With
the flag, each round first reads the raw image through an rdwr LUN of the appliance's
tgtd; the rackdisk cache is still empty when the timed cold read starts.

Three variants, printed side by side:
  loopback  nginx on 127.0.0.1, no rate limit. On this path the iSCSI transport alone
            costs more than curl (tgt's own rdwr store on the raw file, read the same way,
            is printed as a second reference line).
  direct    the same nginx, with `direct_io = true` in the appliance's [cache] and [iscsi]
            sections: chunks are inserted and read with O_DIRECT, so the cold read writes
            no page cache (see the machine line below for why that matters here).
  limited   nginx in a network namespace created for the run (name rdcold-<pid>,
            addresses in 10.214.0.0/24, a veth pair to the host namespace) whose seed side
            sends through `tc qdisc tbf rate RATE` (env BENCH_SEED_RATE or --seed-rate,
            default 1gbit): a seed behind a realistic link. curl and the appliance both
            fetch through that same link. The namespace is removed at the end, also on
            failure (try/finally and atexit).
The fetcher's counters of each round are printed, and the CPU time rackdiskd, tgtd and
qemu-img used during the cold read, to see where the time goes.

The run also measures, once, how fast this machine writes memory it has not used before
against the same memory written again (256 MiB, anonymous). On the development VM the
first is ~100x slower, and a new mapping is slow again right after the last one was
unmapped. The guest is paravirtualized (its kernel profiles show pvm_* hooks); turning its
free page reporting off (page_reporting_order, free_bitmap_enable) did not change the
figure, so the host taking back freed memory is not the cause. A cold read pays it for
the new memory of a fresh tgtd (its command buffers' heap) and rackdiskd (its fetch
buffers); curl, writing to /dev/null, pays it for nothing. The run also times writing
256 MiB into a new file's page cache in the bench's directory, which the chunk store does
for every chunk. On the same VM on 2026-11-22, dd into a new file in /tmp of the idle
machine ran at 5.4-6.5 GB/s, while this probe, run after the bench has written its image
and repository, gave 1.06-1.15 GB/s: the page cache is not slow like fresh anonymous
memory, but what it costs depends on the machine's state, so the figure is of the run at
hand. Figures for reading the results, not part of the ratio.

Every tgtd here (rackdiskd's and the rdwr reference's) runs with the malloc settings and
target limits rackdiskd gives its tgtd (target/tgtmgr.c): without them, tgt faulted in a
fresh 1 MiB buffer per command and no store read faster than ~300 MiB/s on loopback.
"""
import argparse
import atexit
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from appliance_helpers import RACKDISK, Appliance, install_module, servable  # noqa: E402
from servers import Nginx, stop_process  # noqa: E402
from tgt_helpers import Tgtd  # noqa: E402
from iscsi_warm import add_rdwr_lun, children_cpu, cpu_seconds  # noqa: E402

MIB = 1 << 20
NS_PREFIX = "rdcold-"


def memory_write_speed(mib=256):
    """(MB/s writing mib MiB of never-used anonymous memory, MB/s writing it again)."""
    m = mmap.mmap(-1, mib * MIB)
    block = b"\x01" * MIB
    speeds = []
    try:
        for _ in range(2):
            t0 = time.monotonic()
            for off in range(0, mib * MIB, MIB):
                m[off:off + MIB] = block
            speeds.append(mib * MIB / (time.monotonic() - t0) / 1e6)
    finally:
        m.close()
    return speeds[0], speeds[1]


def page_cache_write_speed(directory, mib=256):
    """MB/s writing mib MiB into a new file's page cache (one reused 1 MiB buffer, no
    sync), as the chunk store does; the file is removed."""
    path = os.path.join(directory, "page-cache-probe")
    block = b"\x01" * MIB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        t0 = time.monotonic()
        for _ in range(mib):
            os.write(fd, block)
        return mib * MIB / (time.monotonic() - t0) / 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def timed(cmd, timeout=900):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr}")
    return dt


def bench_read(url, size, depth):
    return timed(["qemu-img", "bench", "-f", "raw", "-c", str(size // MIB), "-d", str(depth),
                  "-s", "1M", "-S", "1M", "-o", "0", url])


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


class SeedNetns:
    """A network namespace holding the seed's end of a veth pair, rate-limited on the
    seed side. Addresses: a /30 of 10.214.0.0/24 picked from the pid, so two runs at once
    do not collide."""

    def __init__(self, rate):
        pid = os.getpid()
        self.name = f"{NS_PREFIX}{pid}"
        base = 4 * (pid % 64)
        self.host_ip, self.seed_ip = f"10.214.0.{base + 1}", f"10.214.0.{base + 2}"
        self.host_if, self.seed_if = f"rdch{pid % 100000}", f"rdcs{pid % 100000}"
        self.rate = rate
        self.up = False

    def start(self):
        self.remove_stale()
        atexit.register(self.stop)
        self.up = True
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.seed_if,
           "netns", self.name)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.run("ip", "addr", "add", f"{self.seed_ip}/30", "dev", self.seed_if)
        self.run("ip", "link", "set", self.seed_if, "up")
        self.run("ip", "link", "set", "lo", "up")
        # The seed's sending side: everything the seed serves crosses this queue.
        self.run("tc", "qdisc", "add", "dev", self.seed_if, "root", "tbf", "rate", self.rate,
                 "burst", "1mb", "latency", "20ms")
        return self

    def run(self, *cmd):
        sh("ip", "netns", "exec", self.name, *cmd)

    def stop(self):
        if not self.up:
            return
        self.up = False
        # Deleting one end of a veth pair deletes both; the namespace goes once no
        # process is left in it (the caller stops nginx first).
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    @staticmethod
    def remove_stale():
        """Namespaces of earlier runs whose process is gone (killed before cleanup)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if not name.startswith(NS_PREFIX):
                continue
            try:
                os.kill(int(name[len(NS_PREFIX):]), 0)
                continue
            except (ValueError, ProcessLookupError):
                pass
            except PermissionError:
                continue
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class NetnsNginx(Nginx):
    """servers.Nginx listening on the seed address inside the namespace."""

    def __init__(self, root, workdir, netns):
        super().__init__(root, workdir)
        self.netns = netns

    @property
    def url(self):
        return f"http://{self.netns.seed_ip}:{self.port}"

    def write_conf(self):
        super().write_conf()
        path = os.path.join(self.dir, "nginx.conf")
        with open(path) as f:
            conf = f.read()
        with open(path, "w") as f:
            f.write(conf.replace(f"listen 127.0.0.1:{self.port}",
                                 f"listen {self.netns.seed_ip}:{self.port}"))

    def start(self):
        self.write_conf()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns.name, "nginx", "-p", self.dir, "-c",
             os.path.join(self.dir, "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        try:
            while subprocess.run(["curl", "-sf", "-o", "/dev/null", "--max-time", "1",
                                  f"{self.url}/tags/"], timeout=10).returncode:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx in {self.netns.name} did not start: "
                                       f"{self.proc.stderr.read() if self.proc.poll() else ''}")
                time.sleep(0.1)
        except BaseException:
            self.stop()  # a failed start leaves no nginx behind
            raise
        return self

    def stop(self):
        if self.proc:
            stop_process(self.proc)
        self.proc = None


def chunk_bytes_sent(nginx):
    """Body bytes nginx sent for chunk objects so far (access log, combined format)."""
    total = 0
    for line in nginx.requests("GET /chunks/"):
        parts = line.split('"')
        fields = parts[2].split() if len(parts) > 2 else []
        if len(fields) >= 2 and fields[1].isdigit():
            total += int(fields[1])
    return total


def perf_start(base, label, rnd, pids):
    """perf record -g of rackdiskd and tgtd during a cold read into BASE.LABEL.ROUND."""
    if not base:
        return None
    out = f"{base}.{label}.{rnd}"
    rec = subprocess.Popen(["perf", "record", "-g", "-o", out + ".data", "-p",
                            ",".join(str(p) for p in pids.values())],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches before the read starts
    return rec, out


def perf_stop(rec):
    if not rec:
        return
    proc, out = rec
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    with open(out, "w") as f:
        subprocess.run(["perf", "report", "-i", out + ".data", "--no-children", "--stdio",
                        "--sort", "comm,dso,sym", "-g", "none", "--percent-limit", "0.3"],
                       stdout=f, stderr=subprocess.DEVNULL, timeout=300)
    print(f"  perf profile of rackdiskd and tgtd during the cold read: {out}")


def run_variant(label, nginx, size, args, seed_extra, raw, direct=False):
    """Rounds of curl + cold + warm reads against nginx; returns a result dict. With
    direct, the appliance sets direct_io in [cache] and [iscsi]."""
    url_raw = f"{nginx.url}/image.raw"
    # Page cache warm for both sides: nginx serves both from memory.
    timed(["curl", "-sf", "-o", "/dev/null", url_raw])
    rows = []
    for rnd in range(1, args.rounds + 1):
        curl = timed(["curl", "-sf", "-o", "/dev/null", url_raw])
        sent0 = chunk_bytes_sent(nginx)
        io = ["direct_io = true"] if direct else []
        app = Appliance(nginx.url, name=f"cold{rnd}", extra={
            "seed": seed_extra, "node": [], "cache": io,
            "iscsi": ["io_timeout_ms = 60000", *io]})
        try:
            app.start()
            p = app.cli("disk", "create", "d1", "--image", "cold")
            if p.returncode:
                raise RuntimeError(p.stderr)
            url = p.stdout.strip().split("\n")[-1]
            if args.tgtd_in_service:
                # One whole read through an rdwr LUN of the same tgtd: its heap then holds
                # the command buffers, as in an appliance that has served I/O before.
                bench_read(add_rdwr_lun(app, raw), size, args.depth)
            pids = {"rackdiskd": app.proc.pid, "tgtd": app.tgtd_pid()}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
            reader0 = children_cpu()
            rec = perf_start(args.perf, label, rnd, pids)
            try:
                cold = bench_read(url, size, args.depth)
            finally:
                perf_stop(rec)
            cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in pids.items()}
            cpu["qemu-img"] = children_cpu() - reader0
            warm = bench_read(url, size, args.depth)
            _, st = app.request("GET", "/api/v1/cache")
        finally:
            app.cleanup()
        sent = chunk_bytes_sent(nginx) - sent0
        f = st["fetch"]
        rows.append((cold / curl, curl, cold, warm))
        print(f"{label} round {rnd}: curl {curl:.2f} s ({size / MIB / curl:.0f} MiB/s) | "
              f"iSCSI cold {cold:.2f} s ({size / MIB / cold:.0f} MiB/s) = "
              f"{cold / curl:.2f}x curl | warm re-read {warm:.2f} s "
              f"({size / MIB / warm:.0f} MiB/s)")
        print(f"  fetcher: seed {f['seed']['fetches']} chunks, "
              f"{f['seed']['failures']} failures, {f['retries']} retries, "
              f"{f['timeouts']} timeouts, {f['coalesced']} coalesced, "
              f"{f['readahead']} readahead; store {st['store']['chunks']} chunks, "
              f"{st['store']['inserts']} inserts; the seed sent {sent / MIB:.0f} MiB of chunk "
              f"objects (zstd, deduplicated) where curl took {size / MIB:.0f} MiB")
        # Where a loopback cold read's time goes on a small machine: the CPU the three
        # processes need, against the cores there are (curl + nginx need far less).
        print("  CPU during the cold read: " +
              ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items()) +
              f"; sum {sum(cpu.values()):.2f} s on {os.cpu_count()} cores")
    rows.sort()
    return rows[len(rows) // 2]  # the median round by ratio


def rdwr_reference(work, repo, size, args):
    # Tuned as rackdiskd's tgtd is: tgt's default 16 I/O threads per LUN, and (from
    # tgt_helpers) the same malloc settings and target limits.
    tgtd = Tgtd(os.path.join(work, "tgtd"), iothreads=16)
    try:
        tgtd.start()
        rdwr_url = tgtd.add_lun(1, os.path.join(repo, "image.raw"), bstype="rdwr")
        bench_read(rdwr_url, size, args.depth)  # page cache warm, as for curl
        return min(bench_read(rdwr_url, size, args.depth) for _ in range(args.rounds))
    finally:
        tgtd.cleanup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="[seed] workers (0: default)")
    ap.add_argument("--readahead", type=int, default=-1, help="[seed] readahead (-1: default)")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--seed-rate", default=os.environ.get("BENCH_SEED_RATE", "1gbit"),
                    help="tc rate of the limited variant's seed link (env BENCH_SEED_RATE)")
    ap.add_argument("--variants", default="loopback,direct,limited")
    ap.add_argument("--perf", default=None,
                    help="perf record rackdiskd + tgtd during each cold read into "
                         "PERF.<variant>.<round> (report) and .data")
    ap.add_argument("--tgtd-in-service", action="store_true",
                    help="before each cold read, read the raw image once through an rdwr LUN "
                         "of the appliance's tgtd (a tgtd that has served I/O; the rackdisk "
                         "cache stays empty)")
    args = ap.parse_args()
    variants = args.variants.split(",")

    install_module()
    work = tempfile.mkdtemp(prefix="rdcold", dir="/tmp")
    nginx = netns = None
    results = {}
    try:
        raw = os.path.join(work, "image.raw")
        repo = os.path.join(work, "repo")
        subprocess.run([sys.executable, os.path.join(HERE, "bench_publish_gen.py"), raw,
                        str(args.size_mib), "3"], check=True)
        subprocess.run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", "cold",
                        "--chunk-size", "1M"], check=True, capture_output=True)
        # The raw file is served by the same nginx, for curl.
        os.rename(raw, os.path.join(repo, "image.raw"))
        raw = os.path.join(repo, "image.raw")
        servable(repo)
        size = os.path.getsize(os.path.join(repo, "image.raw"))
        nobj = sum(len(f) for _, _, f in os.walk(os.path.join(repo, "chunks")))
        print(f"image: {size // MIB} MiB, 1 MiB chunks, {nobj} distinct non-zero objects "
              f"({size // MIB - nobj} chunks are zero or duplicates)")

        cache_mbs = page_cache_write_speed(work)
        fresh_mbs, reused_mbs = memory_write_speed()
        print(f"machine: writing fresh memory {fresh_mbs:.0f} MB/s, the same memory again "
              f"{reused_mbs:.0f} MB/s, a new file's page cache {cache_mbs:.0f} MB/s (a fresh "
              f"tgtd's and rackdiskd's new buffers are fresh memory; the chunk store writes "
              f"page cache; curl to /dev/null writes neither)")
        seed_extra = []
        if args.workers:
            seed_extra.append(f"workers = {args.workers}")
        if args.readahead >= 0:
            seed_extra.append(f"readahead = {args.readahead}")
        if "loopback" in variants or "direct" in variants:
            nginx = Nginx(repo, os.path.join(work, "nginx")).start()
            if "loopback" in variants:
                results["loopback"] = run_variant("loopback", nginx, size, args, seed_extra,
                                                  raw)
            if "direct" in variants:
                results["direct"] = run_variant("loopback, direct_io", nginx, size, args,
                                                seed_extra, raw, direct=True)
            nginx.stop()
            nginx = None
        if "limited" in variants:
            netns = SeedNetns(args.seed_rate).start()
            nginx = NetnsNginx(repo, os.path.join(work, "nginx-ns"), netns).start()
            results["limited"] = run_variant(f"seed at {args.seed_rate}", nginx, size, args,
                                             seed_extra, raw)
        rdwr = rdwr_reference(work, repo, size, args) if "loopback" in variants else None
    finally:
        if nginx:
            nginx.stop()
        if netns:
            netns.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{size // MIB} MiB image, depth {args.depth}, median round of {args.rounds}, "
          f"{'tgtd in service' if args.tgtd_in_service else 'fresh appliance and tgtd'}")
    print(f"{'variant':22} {'curl':>14} {'iSCSI cold':>14} {'cold/curl':>10} {'warm re-read':>14}")
    names = {"loopback": "loopback (unlimited)", "direct": "loopback, direct_io",
             "limited": f"seed at {args.seed_rate}"}
    for k, (ratio, curl, cold, warm) in results.items():
        print(f"{names[k]:22} {curl:8.2f} s     {cold:8.2f} s     {ratio:8.2f}x "
              f"{warm:8.2f} s")
    if rdwr is not None:
        lc = results["loopback"][1]
        print(f"{'tgt rdwr, raw file':22} {'':14} {rdwr:8.2f} s     {rdwr / lc:8.2f}x "
              f"(reference: iSCSI alone, no rackdisk, vs loopback curl)")
    for k, (ratio, curl, cold, warm) in results.items():
        print(f"bench-iscsi-cold {names[k]}: cold/curl ratio {ratio:.2f}x "
              f"(curl {curl:.2f} s, cold {cold:.2f} s, warm {warm:.2f} s; target <= 1.5x)")
    # A reference for reading the ratios, short enough for report.py's table.
    print(f"bench-iscsi-cold machine (no target): fresh memory written at {fresh_mbs:.0f} "
          f"MB/s, reused at {reused_mbs:.0f} MB/s, a new file's page cache at "
          f"{cache_mbs:.0f} MB/s")


if __name__ == "__main__":
    main()
