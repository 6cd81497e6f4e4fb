"""Helpers for the image tests: run build/rackdisk, build images, snapshot a repository,
and decode chunk objects with the zstd tool (independently of rackdisk's own code)."""
import hashlib
import json
import os
import subprocess

from servers import ROOT, BUILD

RACKDISK = os.environ.get("RACKDISK", os.path.join(BUILD, "rackdisk"))
SAMPLE = os.path.join(ROOT, "scripts", "make-sample-image.sh")
KIB = 1024
MIB = 1024 * KIB


def servable(path):
    """nginx workers run as an unprivileged user, and pytest's temporary directories are
    0700: open the directories above path for traversal (o+x) so nginx can read it."""
    d = os.path.abspath(str(path))
    while d not in ("/", "/tmp"):
        if os.path.isdir(d):
            os.chmod(d, os.stat(d).st_mode | 0o055)
        d = os.path.dirname(d)
    return str(path)


def rd(*args, timeout=120):
    """Runs `rackdisk image ARGS...`; returns the CompletedProcess (text mode)."""
    return subprocess.run([RACKDISK, "image", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def rd_ok(*args, timeout=120):
    p = rd(*args, timeout=timeout)
    assert p.returncode == 0, f"rackdisk image {args} failed: {p.stderr}"
    return p


def publish(src, repo, name, chunk_size="64K", *extra):
    p = rd_ok("publish", src, "--repo", repo, "--name", name, "--chunk-size", chunk_size,
              "--json", *extra)
    return json.loads(p.stdout)


def assert_one_line_error(p, *needles):
    """A failed command: non-zero exit, stderr exactly one line 'rackdisk: ...'."""
    assert p.returncode != 0, f"expected failure, got success: {p.stdout}"
    lines = p.stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one error line, got: {p.stderr!r}"
    assert lines[0].startswith("rackdisk: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def sample_image(path, size_mb=8, seed=1):
    subprocess.run(["bash", SAMPLE, str(path), str(size_mb), str(seed)], check=True,
                   capture_output=True, timeout=120)
    return str(path)


def chunk_hashes(data, chunk_size):
    """Expected manifest entries: sha256 hex per chunk, None for an all-zero chunk."""
    out = []
    for off in range(0, len(data), chunk_size):
        c = data[off:off + chunk_size]
        out.append(None if c.count(0) == len(c) else hashlib.sha256(c).hexdigest())
    return out


def snapshot(repo):
    """Every file of a repository: relative path -> (size, mtime_ns, sha256)."""
    state = {}
    for d, _, files in os.walk(repo):
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            state[os.path.relpath(p, repo)] = (st.st_size, st.st_mtime_ns, digest)
    return state


def objects(repo):
    """Paths of all chunk objects in a repository."""
    out = []
    for d, _, files in os.walk(os.path.join(repo, "chunks")):
        out += [os.path.join(d, f) for f in files]
    return sorted(out)


def object_path(repo, h):
    return os.path.join(repo, "chunks", h[:2], h)


def manifest_of(repo, name):
    with open(os.path.join(repo, "tags", name)) as f:
        image_id = f.read().strip()
    with open(os.path.join(repo, "manifests", image_id + ".json"), "rb") as f:
        raw = f.read()
    assert hashlib.sha256(raw).hexdigest() == image_id
    return image_id, json.loads(raw)


def zstd_decode(path):
    return subprocess.run(["zstd", "-q", "-d", "-c", path], check=True, capture_output=True,
                          timeout=60).stdout


def zstd_encode(data, tmp_path):
    src = os.path.join(str(tmp_path), "zstd-in")
    with open(src, "wb") as f:
        f.write(data)
    return subprocess.run(["zstd", "-q", "-c", src], check=True, capture_output=True,
                          timeout=60).stdout


def reassemble(repo, manifest):
    """Rebuilds the image bytes from the repository using only zstd and the manifest."""
    size, cs = manifest["size"], manifest["chunk_size"]
    parts = []
    for i, h in enumerate(manifest["chunks"]):
        n = min(cs, size - i * cs)
        parts.append(bytes(n) if h is None else zstd_decode(object_path(repo, h)))
    return b"".join(parts)
