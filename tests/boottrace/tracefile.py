"""Reading rackdisk read traces (target/trace.h):

    # rackdisk-trace 1
    # image <image-id> size <bytes>
    <seq> <start_us> <end_us> <offset_bytes> <length_bytes>
    ...
    # dropped N            (only when reads could not be timed)

parse() checks the format strictly (the replayer in tests/rack/ relies on it) and returns
a Trace; stats() gives the figures record.py prints.
"""
import re
from dataclasses import dataclass, field

HEADER = "# rackdisk-trace 1"
IMAGE_RE = re.compile(r"^# image ([0-9a-f]{64}) size (\d+)$")
DROPPED_RE = re.compile(r"^# dropped (\d+)$")


@dataclass
class Read:
    seq: int
    start_us: int
    end_us: int
    offset: int
    length: int


@dataclass
class Trace:
    image_id: str
    size: int
    reads: list = field(default_factory=list)
    dropped: int = 0


class TraceError(ValueError):
    pass


def parse(text, sort=False):
    """Parses trace text. The reads must be sorted by seq unless sort=True (a trace left
    in completion order by a LUN that was never closed)."""
    lines = text.splitlines()
    if len(lines) < 2 or lines[0] != HEADER:
        raise TraceError(f"first line is not {HEADER!r}")
    m = IMAGE_RE.match(lines[1])
    if not m:
        raise TraceError(f"line 2 is not '# image <64 hex> size <bytes>': {lines[1]!r}")
    t = Trace(m.group(1), int(m.group(2)))
    for no, line in enumerate(lines[2:], 3):
        d = DROPPED_RE.match(line)
        if d:
            t.dropped = int(d.group(1))
            continue
        parts = line.split(" ")
        if len(parts) != 5 or not all(p.isdigit() for p in parts):
            raise TraceError(f"line {no}: expected 5 unsigned integers: {line!r}")
        r = Read(*map(int, parts))
        if r.end_us < r.start_us:
            raise TraceError(f"line {no}: ends before it starts")
        if r.length == 0 or r.offset + r.length > t.size:
            raise TraceError(f"line {no}: read [{r.offset}, +{r.length}) outside the "
                             f"{t.size}-byte disk")
        t.reads.append(r)
    if sort:
        t.reads.sort(key=lambda r: r.seq)
    for a, b in zip(t.reads, t.reads[1:]):
        if b.seq <= a.seq or b.start_us < a.start_us:
            raise TraceError(f"reads not sorted by seq and start at seq {b.seq}")
    return t


def load(path, sort=False):
    with open(path) as f:
        return parse(f.read(), sort)


def unique_ranges(reads):
    """The union of the reads' byte ranges, as sorted disjoint (start, end) pairs."""
    out = []
    for s, e in sorted((r.offset, r.offset + r.length) for r in reads):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def stats(t, chunk_size):
    chunks = set()
    for r in t.reads:
        chunks.update(range(r.offset // chunk_size, (r.offset + r.length - 1) // chunk_size + 1))
    reads = t.reads
    return {
        "reads": len(reads),
        "bytes": sum(r.length for r in reads),
        "unique_bytes": sum(e - s for s, e in unique_ranges(reads)),
        "unique_chunks": len(chunks),
        "chunk_size": chunk_size,
        "span_us": (max(r.end_us for r in reads) if reads else 0),
        "max_in_flight": max_in_flight(reads),
        "dropped": t.dropped,
    }


def max_in_flight(reads):
    events = sorted([(r.start_us, 1) for r in reads] + [(r.end_us, -1) for r in reads],
                    key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best
