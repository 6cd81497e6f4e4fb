#!/usr/bin/python3
"""Warm iSCSI benchmark: qemu-img bench against a fully cached rackdisk LUN and against
tgt's rdwr store on a raw file of the same image, both in one private tgtd, same run.

    iscsi_warm.py [--size MiB] [--rounds N]

Workloads (QEMU's iscsi driver, cache=none, aio in qemu-img's own event loop):
  seq-1M-d16   1 MiB sequential reads, queue depth 16
  rand-4K-d32  4 KiB reads at depth 32; qemu-img bench only steps through the image, so
               the step is a prime number of 4 KiB blocks (a scattered, cache-hostile
               order over the whole image) - called "random" below
Each workload runs rounds times on each LUN, alternating, after a warm-up pass; the best
round counts. Prints MiB/s (and IOPS) for both and the ratio rackdisk/rdwr (target
>= 0.95). The rackdisk LUN reports its chunk hits (TOUCH) to a fetch server, as it would
to rackdiskd.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from tgt_helpers import FetchServer, Tgtd, install_module, make_disk, make_raw  # noqa: E402

MiB = 1 << 20


def bench(url, size, depth, count, step):
    r = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(count),
                        "-d", str(depth), "-s", str(size), "-S", str(step), url],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"qemu-img bench: {r.stderr}")
    m = re.search(r"Run completed in ([0-9.]+) seconds", r.stdout)
    secs = float(m.group(1))
    return count * size / secs / MiB, count / secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="image size in MiB")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    image = args.size * MiB

    install_module()
    work = tempfile.mkdtemp(prefix="rdbench", dir="/tmp")
    tgtd = Tgtd(os.path.join(work, "tgtd"))
    fs = None
    try:
        raw = make_raw(os.path.join(work, "image.raw"), image, seed=99)
        sock = os.path.join(work, "f.sock")
        make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all",
                  socket_path=sock)
        fs = FetchServer(sock, os.path.join(work, "store"), raw=None).start()
        tgtd.start()
        urls = {"rackdisk": tgtd.add_lun(1, os.path.join(work, "disk")),
                "rdwr": tgtd.add_lun(2, raw, bstype="rdwr")}
        workloads = [
            ("seq-1M-d16", MiB, 16, max(image // MiB * 2, 256), MiB),
            ("rand-4K-d32", 4096, 32, 40000, 4096 * 7919),
        ]
        print(f"warm iSCSI reads, {args.size} MiB image, qemu-img bench, best of {args.rounds}")
        print(f"{'workload':14} {'rackdisk':>22} {'rdwr (baseline)':>22} {'ratio':>7}")
        worst = None
        for name, size, depth, count, step in workloads:
            for url in urls.values():  # warm-up: page cache and connections
                bench(url, size, depth, count // 4, step)
            best = {k: (0.0, 0.0) for k in urls}
            for _ in range(args.rounds):
                for k, url in urls.items():
                    res = bench(url, size, depth, count, step)
                    if res[0] > best[k][0]:
                        best[k] = res
            ratio = best["rackdisk"][0] / best["rdwr"][0]
            worst = ratio if worst is None else min(worst, ratio)
            cells = [f"{best[k][0]:8.1f} MiB/s {best[k][1]:7.0f}/s" for k in urls]
            print(f"{name:14} {cells[0]:>22} {cells[1]:>22} {ratio:6.2f}x")
        print(f"touch reports received: {fs.counts['TOUCH']}")
        print(f"worst ratio {worst:.2f}x (target >= 0.95x)")
    finally:
        tgtd.cleanup()
        if fs:
            fs.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
