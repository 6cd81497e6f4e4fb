"""bench_publish_gen.py OUT SIZE_MIB [SEED]: writes a disk-image-like file for the publish
benchmark, laid out in 1 MiB extents:
  ~30% pseudo-random (incompressible: media, compressed packages),
  ~35% text-like (compressible: documentation text at shifting offsets, with changing
       line numbers, so no two extents are identical),
  ~20% zero (holes in the file: free space),
  ~15% repeated (copies of earlier extents: duplicated files, deduplicable).
The layout is shuffled so regions of each kind are spread through the image."""
import gzip
import glob
import os
import random
import sys

MIB = 1 << 20


def corpus(limit=16 * MIB):
    parts, total = [], 0
    for path in sorted(glob.glob("/usr/share/doc/*/*")):
        try:
            if path.endswith(".gz"):
                data = gzip.open(path).read()
            elif os.path.isfile(path):
                data = open(path, "rb").read()
            else:
                continue
        except (OSError, EOFError):
            continue
        if b"\0" in data[:4096]:
            continue  # not text
        parts.append(data)
        total += len(data)
        if total >= limit:
            break
    text = b"".join(parts)
    while len(text) < 4 * MIB:  # a machine with little documentation
        text += text or b"the quick brown fox jumps over the lazy dog\n"
    return text


def main():
    out, size_mib = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    text = corpus()
    kinds = (["random"] * 30 + ["text"] * 35 + ["zero"] * 20 + ["repeat"] * 15)
    layout = [kinds[i % len(kinds)] for i in range(size_mib)]
    rng.shuffle(layout)
    written = []  # offsets of non-zero extents, for repeats
    with open(out, "wb") as f:
        for i, kind in enumerate(layout):
            if kind == "repeat" and not written:
                kind = "text"
            if kind == "zero":
                f.seek(MIB, os.SEEK_CUR)
                continue
            if kind == "random":
                block = rng.randbytes(MIB)
            elif kind == "text":
                off = rng.randrange(len(text) - MIB)
                block = bytearray(text[off:off + MIB])
                for _ in range(64):  # numbered lines that change from extent to extent
                    p = rng.randrange(MIB - 16)
                    block[p:p + 12] = b"%011d\n" % rng.randrange(10 ** 11)
                block = bytes(block)
            else:
                src = rng.choice(written)
                with open(out, "rb") as r:
                    r.seek(src)
                    block = r.read(MIB)
            written.append(i * MIB)
            f.write(block)
        f.truncate(size_mib * MIB)


if __name__ == "__main__":
    main()
