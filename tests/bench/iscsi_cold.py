"""iscsi_cold.py [--size-mib N] [--rounds N] [--workers N] [--readahead N] [--depth N]:
cold whole-disk sequential read through iSCSI from an empty cache, against curl
downloading the raw image from the same nginx (issue 4 target: <= 1.5x curl's time).

A realistic image (tests/bench/bench_publish_gen.py: random, text, zero and repeated
extents) is published with 1 MiB chunks into a repository that nginx serves, the raw file
beside it. Each round starts a fresh appliance (rackdiskd + tgtd, empty cache), creates
a disk and reads it whole with `qemu-img bench` (1 MiB sequential reads at depth N, the
shape of a guest's sequential read), then once more warm. curl fetches the raw file from
the same nginx in the same round. The fetcher's counters of each round are printed, to
see where the time goes, and so is the same read from tgt's own rdwr store on the raw
file (a private tgtd): what iSCSI on this machine costs with no rackdisk at all.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from appliance_helpers import RACKDISK, Appliance, install_module, servable  # noqa: E402
from servers import Nginx  # noqa: E402
from tgt_helpers import Tgtd  # noqa: E402

MIB = 1 << 20


def timed(cmd, timeout=600):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr}")
    return dt


def bench_read(url, size, depth):
    return timed(["qemu-img", "bench", "-f", "raw", "-c", str(size // MIB), "-d", str(depth),
                  "-s", "1M", "-S", "1M", "-o", "0", url])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="[seed] workers (0: default)")
    ap.add_argument("--readahead", type=int, default=-1, help="[seed] readahead (-1: default)")
    ap.add_argument("--depth", type=int, default=16)
    args = ap.parse_args()

    install_module()
    work = tempfile.mkdtemp(prefix="rdcold", dir="/tmp")
    nginx = None
    try:
        raw = os.path.join(work, "image.raw")
        repo = os.path.join(work, "repo")
        subprocess.run([sys.executable, os.path.join(HERE, "bench_publish_gen.py"), raw,
                        str(args.size_mib), "3"], check=True)
        subprocess.run([RACKDISK, "image", "publish", raw, "--repo", repo, "--name", "cold",
                        "--chunk-size", "1M"], check=True, capture_output=True)
        # The raw file is served by the same nginx, for curl.
        os.rename(raw, os.path.join(repo, "image.raw"))
        servable(repo)
        nginx = Nginx(repo, os.path.join(work, "nginx")).start()
        size = os.path.getsize(os.path.join(repo, "image.raw"))
        nobj = sum(len(f) for _, _, f in os.walk(os.path.join(repo, "chunks")))
        print(f"image: {size // MIB} MiB, 1 MiB chunks, {nobj} distinct non-zero objects "
              f"({size // MIB - nobj} chunks are zero or duplicates)")

        seed_extra = []
        if args.workers:
            seed_extra.append(f"workers = {args.workers}")
        if args.readahead >= 0:
            seed_extra.append(f"readahead = {args.readahead}")
        # Page cache warm for both sides: nginx serves both from memory.
        timed(["curl", "-sf", "-o", "/dev/null", f"{nginx.url}/image.raw"])
        ratios = []
        for rnd in range(1, args.rounds + 1):
            curl = timed(["curl", "-sf", "-o", "/dev/null", f"{nginx.url}/image.raw"])
            app = Appliance(nginx.url, name=f"cold{rnd}", extra={
                "seed": seed_extra,
                "node": [], "iscsi": ["io_timeout_ms = 60000"]})
            try:
                app.start()
                p = app.cli("disk", "create", "d1", "--image", "cold")
                if p.returncode:
                    raise RuntimeError(p.stderr)
                url = p.stdout.strip().split("\n")[-1]
                cold = bench_read(url, size, args.depth)
                warm = bench_read(url, size, args.depth)
                _, st = app.request("GET", "/api/v1/cache")
            finally:
                app.cleanup()
            f = st["fetch"]
            ratios.append(cold / curl)
            print(f"round {rnd}: curl {curl:.2f} s ({size / MIB / curl:.0f} MiB/s) | "
                  f"iSCSI cold {cold:.2f} s ({size / MIB / cold:.0f} MiB/s) = "
                  f"{cold / curl:.2f}x curl (target <= 1.5x) | warm re-read {warm:.2f} s "
                  f"({size / MIB / warm:.0f} MiB/s)")
            print(f"  fetcher: seed {f['seed']['fetches']} chunks, "
                  f"{f['seed']['failures']} failures, {f['retries']} retries, "
                  f"{f['timeouts']} timeouts, {f['coalesced']} coalesced, "
                  f"{f['readahead']} readahead; store {st['store']['chunks']} chunks, "
                  f"{st['store']['inserts']} inserts")
        tgtd = Tgtd(os.path.join(work, "tgtd"))
        try:
            tgtd.start()
            rdwr_url = tgtd.add_lun(1, os.path.join(repo, "image.raw"), bstype="rdwr")
            bench_read(rdwr_url, size, args.depth)  # page cache warm, as for curl
            rdwr = min(bench_read(rdwr_url, size, args.depth) for _ in range(args.rounds))
        finally:
            tgtd.cleanup()
        print(f"baseline: tgt rdwr on the raw file, same reads: {rdwr:.2f} s "
              f"({size / MIB / rdwr:.0f} MiB/s) = {rdwr / curl:.2f}x curl")
        ratios.sort()
        print(f"bench-iscsi-cold: depth {args.depth}, median cold/curl ratio "
              f"{ratios[len(ratios) // 2]:.2f}x over {args.rounds} round(s) (target <= 1.5x)")
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
