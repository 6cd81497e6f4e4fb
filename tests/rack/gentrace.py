#!/usr/bin/python3
"""gentrace.py RAW OUT [--seed N] [--fraction F] [--image-id ID]: writes a synthetic,
boot-like trace over a raw image, in the trace format rdreplay reads (tests/rack/replay.c):

    # rackdisk-trace 1
    # image <image-id> size <bytes>
    <seq> <start_us> <end_us> <offset_bytes> <length_bytes>

It stands in for a trace recorded from a real boot (build/boot/boot.trace) until one
exists. The shape follows what a guest does while booting: a read of the first sectors,
then files read front to back in 16-128 KiB requests with the guest's readahead keeping
1-4 of them in flight, mixed with scattered 4 KiB metadata reads, and short think gaps.
Reads land in the image's non-zero areas (a boot reads files, not free space), covering
about FRACTION of the non-zero bytes. Deterministic for a given RAW and --seed.
"""
import argparse
import random
import sys

KIB = 1024
GRAIN = 64 * KIB


def nonzero_extents(raw):
    """[(offset, length)] of the GRAIN-aligned runs of the image holding data."""
    out, start, off = [], None, 0
    zero = bytes(GRAIN)
    with open(raw, "rb") as f:
        while True:
            b = f.read(GRAIN)
            if not b:
                break
            data = b != zero[:len(b)]
            if data and start is None:
                start = off
            elif not data and start is not None:
                out.append((start, off - start))
                start = None
            off += len(b)
    if start is not None:
        out.append((start, off - start))
    return out, off


def generate(raw, seed=1, fraction=0.3):
    """[(start_us, end_us, offset, length)] sorted by start, and the image size."""
    rng = random.Random(seed)
    extents, size = nonzero_extents(raw)
    if not extents:
        raise SystemExit(f"gentrace: {raw} holds no data")
    data_bytes = sum(n for _, n in extents)
    budget = max(GRAIN, int(data_bytes * fraction))
    reads, t = [], 0

    def io_time(length):
        # ~250 us per request plus ~400 MB/s: a plausible local-SSD boot, only used to
        # give the trace its overlaps.
        return 250 + length // 400

    def group(offsets):
        """A burst issued together (the guest's readahead window); returns its end."""
        nonlocal t
        end = t
        for i, (off, length) in enumerate(offsets):
            s = t + 3 * i
            e = s + io_time(length) + rng.randrange(0, 200)
            reads.append((s, e, off, length))
            end = max(end, e)
        return end

    t = group([(0, 4 * KIB)]) + 100
    done = 0
    while done < budget:
        if rng.random() < 0.3:
            # scattered metadata: one 4 KiB read anywhere in the data
            ext_off, ext_len = rng.choice(extents)
            off = ext_off + rng.randrange(0, ext_len // (4 * KIB)) * 4 * KIB
            t = group([(off, 4 * KIB)]) + rng.randrange(20, 400)
            done += 4 * KIB
            continue
        # a file read front to back
        ext_off, ext_len = rng.choice(extents)
        run_len = min(ext_len, rng.choice((256, 512, 1024, 2048, 4096)) * KIB)
        off = ext_off + rng.randrange(0, (ext_len - run_len) // (4 * KIB) + 1) * 4 * KIB
        end_off = off + run_len
        depth = rng.randint(1, 4)
        while off < end_off:
            batch = []
            for _ in range(depth):
                if off >= end_off:
                    break
                length = min(rng.choice((16, 32, 64, 128)) * KIB, end_off - off)
                batch.append((off, length))
                off += length
            t = group(batch) + rng.randrange(0, 60)
            done += sum(n for _, n in batch)
        t += rng.randrange(100, 2000)
    reads.sort(key=lambda r: r[0])
    return reads, size


def write_trace(path, reads, size, image_id):
    with open(path, "w") as f:
        f.write("# rackdisk-trace 1\n")
        f.write(f"# image {image_id} size {size}\n")
        f.write("# synthetic boot-like trace (tests/rack/gentrace.py)\n")
        for i, (s, e, off, length) in enumerate(reads):
            f.write(f"{i} {s} {e} {off} {length}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--image-id", default="unknown")
    args = ap.parse_args()
    if not 0 < args.fraction <= 1:
        sys.exit("gentrace: --fraction must be in (0, 1]")
    reads, size = generate(args.raw, args.seed, args.fraction)
    write_trace(args.out, reads, size, args.image_id)
    print(f"gentrace: {len(reads)} reads, {sum(r[3] for r in reads)} bytes -> {args.out}")


if __name__ == "__main__":
    main()
