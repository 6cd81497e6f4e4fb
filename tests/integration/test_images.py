"""`rackdisk image publish|verify|ls|show` against real repositories: a directory, and the
same directory served by a real nginx on loopback. Images are small (a few MiB, 64 KiB
chunks) so the whole file runs in seconds."""
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from images_util import (MIB, KIB, RACKDISK, assert_one_line_error, chunk_hashes,
                         manifest_of, object_path, objects, publish, rd, rd_ok, reassemble,
                         sample_image, servable, snapshot, zstd_encode)


@pytest.fixture(autouse=True, scope="module")
def _binary():
    assert os.access(RACKDISK, os.X_OK), f"{RACKDISK} missing: run `make build` first"


@pytest.fixture
def mounts():
    """mount(path, options) mounts a tmpfs; every mount is undone at teardown."""
    done = []

    def mount(path, opts):
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
        done.append(str(path))
        return str(path)

    yield mount
    for p in reversed(done):
        if subprocess.run(["umount", p]).returncode != 0:
            subprocess.run(["umount", "-l", p])


def random_bytes(n, seed):
    return random.Random(seed).randbytes(n)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# --- publish, verify, ls, show -------------------------------------------------------

def test_publish_then_verify_from_dir_and_http(tmp_path, nginx_factory):
    img = sample_image(tmp_path / "sample.img", size_mb=8)
    repo = str(tmp_path / "repo")
    res = publish(img, repo, "sample")
    data = open(img, "rb").read()
    want = chunk_hashes(data, 64 * KIB)
    distinct = {h for h in want if h}

    assert res["size"] == len(data)
    assert res["chunks"] == len(want)
    assert res["zero_chunks"] == want.count(None)
    assert res["distinct_chunks"] == len(distinct)
    assert res["new_chunks"] == len(distinct) and res["present_chunks"] == 0
    assert len(objects(repo)) == len(distinct)
    assert sum(os.path.getsize(o) for o in objects(repo)) < res["bytes_written"]

    image_id, manifest = manifest_of(repo, "sample")
    assert image_id == res["id"]
    assert manifest["format"] == 1 and manifest["hash"] == "sha256"
    assert manifest["chunks"] == want
    # The repository holds the image: rebuilt with the zstd tool alone, byte for byte.
    assert reassemble(repo, manifest) == data

    p = rd_ok("verify", "--repo", repo, "sample")
    assert f"{len(distinct)} objects checked, 0 bad" in p.stdout

    web = nginx_factory(servable(repo))
    p = rd_ok("verify", "--repo", web.url, "sample")
    assert f"{len(distinct)} objects checked, 0 bad" in p.stdout
    # Every object was fetched over HTTP (one keep-alive connection per worker).
    assert len(web.requests("GET /chunks/")) == len(distinct)

    show = json.loads(rd_ok("show", "--repo", web.url, "sample", "--json").stdout)
    assert show == {"name": "sample", "id": image_id, "size": len(data),
                    "chunk_size": 64 * KIB, "chunks": len(want),
                    "zero_chunks": want.count(None), "distinct_chunks": len(distinct)}
    text = rd_ok("show", "--repo", repo, "sample").stdout
    assert image_id in text and f"{len(want)} total" in text

    # By id as well as by tag.
    rd_ok("verify", "--repo", web.url, image_id)


def test_ls_lists_tags_from_dir_and_http(tmp_path, nginx_factory):
    repo = str(tmp_path / "repo")
    ids = {}
    for i, name in enumerate(["beta", "alpha", "gamma-1.0"]):
        src = write(tmp_path / f"{name}.raw", random_bytes(256 * KIB, i))
        ids[name] = publish(src, repo, name)["id"]
    with open(os.path.join(repo, "tags", "index")) as f:
        assert f.read() == "alpha\nbeta\ngamma-1.0\n"

    web = nginx_factory(servable(repo))
    for loc in (repo, web.url):
        listed = json.loads(rd_ok("ls", "--repo", loc, "--json").stdout)
        assert [(e["name"], e["id"]) for e in listed] == sorted(ids.items())
        text = rd_ok("ls", "--repo", loc).stdout.splitlines()
        assert [line.split()[0] for line in text] == sorted(ids)

    # Without tags/index the listing falls back to nginx's autoindex.
    os.unlink(os.path.join(repo, "tags", "index"))
    listed = json.loads(rd_ok("ls", "--repo", web.url, "--json").stdout)
    assert [e["name"] for e in listed] == sorted(ids)


def test_ls_repo_spelled_with_equals_and_a_missing_repo(tmp_path):
    """`--repo=DIR` is a repository command too (it went to the daemon and exited 2), and
    a mistyped repository path is an error, not an empty list."""
    repo = str(tmp_path / "repo")
    publish(write(tmp_path / "a.raw", random_bytes(64 * KIB, 1)), repo, "a1")
    listed = json.loads(rd_ok("ls", f"--repo={repo}", "--json").stdout)
    assert [e["name"] for e in listed] == ["a1"]
    assert_one_line_error(rd("ls", "--repo", str(tmp_path / "nosuch")),
                          "No such file or directory")
    assert_one_line_error(rd("ls", "--repo", os.path.join(repo, "tags", "a1")),
                          "Not a directory")
    os.makedirs(tmp_path / "empty")
    assert rd_ok("ls", "--repo", str(tmp_path / "empty"), "--json").stdout.strip() == "[]"


# A preloaded closedir() that, after the tags/ listing, creates PAUSE_DIR/listed and waits
# for PAUSE_DIR/go: it holds a publish between listing the tags and writing tags/index.
PAUSE_AFTER_LISTING_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static DIR *tags;
DIR *opendir(const char *path)
{
	DIR *(*real)(const char *) = (DIR *(*)(const char *))dlsym(RTLD_NEXT, "opendir");
	DIR *d = real(path);
	size_t n = strlen(path);
	if (n >= 5 && !strcmp(path + n - 5, "/tags"))
		tags = d;
	return d;
}
int closedir(DIR *d)
{
	int (*real)(DIR *) = (int (*)(DIR *))dlsym(RTLD_NEXT, "closedir");
	const char *dir = getenv("PAUSE_DIR");
	char path[4096];
	if (d == tags && dir) {
		snprintf(path, sizeof(path), "%s/listed", dir);
		close(open(path, O_WRONLY | O_CREAT, 0644));
		snprintf(path, sizeof(path), "%s/go", dir);
		for (int i = 0; i < 3000 && access(path, F_OK); i++)
			usleep(10000);
	}
	return real(d);
}
"""


def test_concurrent_publishes_keep_every_tag_in_the_index(tmp_path):
    # Publish a lists the tags, then b publishes from start to end, then a writes
    # tags/index: unserialised, a's index (listed before b's tag existed) drops b.
    repo = str(tmp_path / "repo")
    publish(write(tmp_path / "first.raw", random_bytes(64 * KIB, 60)), repo, "first")
    pause = tmp_path / "pause"
    pause.mkdir()
    shim_src = write(tmp_path / "pause.c", PAUSE_AFTER_LISTING_C.encode())
    shim = str(tmp_path / "pause.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", shim, shim_src, "-ldl"], check=True)

    def start(name, seed, env=None):
        return subprocess.Popen([RACKDISK, "image", "publish",
                                 write(tmp_path / f"{name}.raw", random_bytes(64 * KIB, seed)),
                                 "--repo", repo, "--name", name, "--chunk-size", "64K"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    procs = []
    try:
        a = start("a", 61, dict(os.environ, LD_PRELOAD=shim, PAUSE_DIR=str(pause)))
        procs.append(a)
        for _ in range(3000):
            if (pause / "listed").exists() or a.poll() is not None:
                break
            time.sleep(0.01)
        # (a's stderr only once it has ended: reading it would wait for a's end)
        assert (pause / "listed").exists(), (
            "publish a did not list the tags in 30 s" if a.poll() is None
            else a.stderr.read())
        b = start("b", 62)
        procs.append(b)
        try:
            b.wait(timeout=1.5)  # done (50 ms), unless it waits for a's lock
        except subprocess.TimeoutExpired:
            pass
        (pause / "go").touch()
        assert a.wait(timeout=60) == 0, a.stderr.read()
        assert b.wait(timeout=60) == 0, b.stderr.read()
    finally:  # a failed assertion leaves neither publish running
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    with open(os.path.join(repo, "tags", "index")) as f:
        assert f.read() == "a\nb\nfirst\n"
    listed = json.loads(rd_ok("ls", "--repo", repo, "--json").stdout)
    assert [e["name"] for e in listed] == ["a", "b", "first"]  # the lock file is no tag


def test_publish_qcow2_equals_raw(tmp_path):
    raw = sample_image(tmp_path / "s.img", size_mb=6)
    qcow = str(tmp_path / "s.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow], check=True)
    repo = str(tmp_path / "repo")
    a = publish(raw, repo, "raw")
    b = publish(qcow, repo, "qcow")
    assert b["format"] == "qcow2"
    assert a["id"] == b["id"] and b["new_chunks"] == 0
    assert os.listdir(os.path.join(repo, "tmp")) == []


def test_qcow2_names_with_a_colon_are_files_not_protocols(tmp_path):
    # qemu-img reads "file:x.qcow2" as protocol "file" and path "x.qcow2", and
    # "a:b.qcow2" as an unknown protocol "a": publish must convert the file it checked.
    # The repository name "file:repo" is also relative and has a colon (qemu-img writes
    # the converted raw file under it).
    work = tmp_path / "work"
    work.mkdir()
    images = {}
    for name, seed in (("file:x.qcow2", 21), ("x.qcow2", 22), ("a:b.qcow2", 23)):
        raw = write(tmp_path / f"{seed}.raw", random_bytes(512 * KIB, seed))
        images[name] = open(raw, "rb").read()
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw,
                        os.path.join(str(work), name)], check=True)
    for name, tag, repo in (("file:x.qcow2", "fx", str(tmp_path / "repo")),
                            ("a:b.qcow2", "ab", str(tmp_path / "repo")),
                            ("file:x.qcow2", "fx", "file:repo")):
        p = subprocess.run([RACKDISK, "image", "publish", name, "--repo", repo, "--name", tag,
                            "--chunk-size", "64K", "--json"],
                           cwd=str(work), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (name, repo, p.stderr)
        assert json.loads(p.stdout)["format"] == "qcow2"
        _, m = manifest_of(os.path.join(str(work), repo), tag)
        assert m["chunks"] == chunk_hashes(images[name], 64 * KIB), (name, repo)
        assert os.listdir(os.path.join(str(work), repo, "tmp")) == []

def test_shared_chunks_are_stored_once(tmp_path):
    cs = 64 * KIB
    base = bytearray(random_bytes(4 * MIB, 7))
    base[MIB:2 * MIB] = bytes(MIB)  # a zero region
    other = bytearray(base)
    for i in (3, 40):  # two chunks differ
        other[i * cs + 100] ^= 0xFF
    a = write(tmp_path / "a.raw", base)
    b = write(tmp_path / "b.raw", other)
    repo = str(tmp_path / "repo")

    ra = publish(a, repo, "a")
    rb = publish(b, repo, "b")
    ha, hb = chunk_hashes(bytes(base), cs), chunk_hashes(bytes(other), cs)
    union = {h for h in ha + hb if h}
    assert len(objects(repo)) == len(union) == len({h for h in ha if h}) + 2
    assert rb["new_chunks"] == 2
    assert rb["present_chunks"] == rb["distinct_chunks"] - 2
    assert ra["id"] != rb["id"]
    rd_ok("verify", "--repo", repo, "a")
    rd_ok("verify", "--repo", repo, "b")


def test_duplicate_chunks_within_an_image_stored_once(tmp_path):
    block = random_bytes(64 * KIB, 3)
    src = write(tmp_path / "rep.raw", block * 40 + random_bytes(64 * KIB, 4) + block * 9)
    repo = str(tmp_path / "repo")
    res = publish(src, repo, "rep", "64K", "--workers", "4")
    assert res["chunks"] == 50 and res["distinct_chunks"] == 2 and res["new_chunks"] == 2
    assert len(objects(repo)) == 2


def test_republishing_unchanged_writes_nothing(tmp_path):
    img = sample_image(tmp_path / "s.img", size_mb=6)
    repo = str(tmp_path / "repo")
    first = publish(img, repo, "s")
    before = snapshot(repo)
    again = publish(img, repo, "s")
    assert again["id"] == first["id"]
    assert again["new_chunks"] == 0 and again["bytes_written"] == 0
    assert again["present_chunks"] == first["distinct_chunks"]
    assert snapshot(repo) == before  # not even an mtime changed


def test_verify_finds_a_flipped_byte_in_any_object(tmp_path, nginx_factory):
    img = sample_image(tmp_path / "s.img", size_mb=6)
    repo = str(tmp_path / "repo")
    publish(img, repo, "s")
    _, manifest = manifest_of(repo, "s")
    hashes = sorted({h for h in manifest["chunks"] if h})
    rng = random.Random(11)
    picks = [hashes[0], hashes[-1]] + rng.sample(hashes[1:-1], 4)
    web = nginx_factory(servable(repo))
    for n, h in enumerate(picks):
        path = object_path(repo, h)
        orig = open(path, "rb").read()
        # Header, last byte, and random places in between.
        pos = [0, len(orig) - 1, rng.randrange(len(orig))][n % 3] if n < 3 else \
            rng.randrange(len(orig))
        bad = bytearray(orig)
        bad[pos] ^= 1 << rng.randrange(8)
        write(path, bad)
        loc = web.url if n % 2 else repo
        p = rd("verify", "--repo", loc, "s")
        assert p.returncode != 0, f"flip at {pos} of {h} not found"
        errs = [line for line in p.stderr.splitlines() if line]
        assert len(errs) == 1 and h in errs[0], p.stderr
        assert "1 bad" in p.stdout
        write(path, orig)
    rd_ok("verify", "--repo", repo, "s")


# A preloaded access() that reports every object and manifest missing: the publish then
# stores all of them, as when another publish installs them between its existence test and
# its move into place. Built with the system compiler into the test's directory.
LATE_ARRIVALS_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
int access(const char *path, int mode)
{
	static int (*real)(const char *, int);
	if (strstr(path, "/chunks/") || strstr(path, "/manifests/")) {
		errno = ENOENT;
		return -1;
	}
	if (!real)
		real = (int (*)(const char *, int))dlsym(RTLD_NEXT, "access");
	return real(path, mode);
}
"""


def late_arrivals_env(tmp_path):
    src = write(tmp_path / "late.c", LATE_ARRIVALS_C.encode())
    so = str(tmp_path / "late.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src, "-ldl"], check=True)
    return dict(os.environ, LD_PRELOAD=so)


def test_failed_publish_keeps_objects_and_manifest_others_use(tmp_path):
    repo = str(tmp_path / "repo")
    src = write(tmp_path / "x.raw", random_bytes(MIB, 31))
    publish(src, repo, "a")
    image_id, manifest = manifest_of(repo, "a")
    before = objects(repo)
    # The second publish of the same image stores every object and the manifest again
    # (they "arrive" after its existence tests), then fails at its tag: a directory.
    os.makedirs(os.path.join(repo, "tags", "b", "x"))
    p = subprocess.run([RACKDISK, "image", "publish", src, "--repo", repo, "--name", "b",
                        "--chunk-size", "64K"], capture_output=True, text=True, timeout=120,
                       env=late_arrivals_env(tmp_path))
    assert_one_line_error(p, "writing tag")
    # Nothing image a uses was taken away; only temporary files were removed.
    assert objects(repo) == before
    assert os.path.exists(os.path.join(repo, "manifests", image_id + ".json"))
    assert os.listdir(os.path.join(repo, "tmp")) == []
    assert reassemble(repo, manifest) == open(src, "rb").read()
    rd_ok("verify", "--repo", repo, "a")


@pytest.mark.parametrize("stale", [["c.1.0", "c.1.1"], ["probe.1"], ["f.1"]],
                         ids=["chunk", "probe", "file"])
def test_leftovers_of_a_crashed_publish_with_the_same_pid(tmp_path, stale):
    # Run as pid 1 of a new pid namespace (as in a container, every time), after a crashed
    # run of pid 1 left temporary files under the names a pid-based scheme would pick. The
    # files stay: they could as well belong to a live publish of another container's pid 1.
    repo = str(tmp_path / "repo")
    os.makedirs(os.path.join(repo, "tmp"))
    for name in stale:
        write(os.path.join(repo, "tmp", name), b"left by a crash")
    src = write(tmp_path / "x.raw", random_bytes(256 * KIB, 41))
    p = subprocess.run(["unshare", "--pid", "--fork", RACKDISK, "image", "publish", src,
                        "--repo", repo, "--name", "x", "--chunk-size", "64K"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    _, manifest = manifest_of(repo, "x")
    assert reassemble(repo, manifest) == open(src, "rb").read()
    assert sorted(os.listdir(os.path.join(repo, "tmp"))) == sorted(stale)


def test_days_old_temporary_files_are_swept(tmp_path):
    """A crashed publish can leave a whole image's objects in tmp/; a publish removes
    temporary files older than three days (a live publish does not run that long) and
    keeps recent ones (they may be a concurrent publish's)."""
    repo = str(tmp_path / "repo")
    tmp = os.path.join(repo, "tmp")
    os.makedirs(tmp)
    old = [write(os.path.join(tmp, n), b"left by a crash") for n in ("c.dead.0", "f.dead")]
    recent = write(os.path.join(tmp, "c.live.0"), b"a concurrent publish's")
    week_ago = time.time() - 7 * 86400
    for path in old:
        os.utime(path, (week_ago, week_ago))
    two_days_ago = time.time() - 2 * 86400
    os.utime(recent, (two_days_ago, two_days_ago))
    publish(write(tmp_path / "x.raw", random_bytes(64 * KIB, 42)), repo, "x")
    assert os.listdir(tmp) == ["c.live.0"]


# --- bad input: one-line error, non-zero exit, repository unchanged -----------------

@pytest.fixture
def seeded(tmp_path):
    """A repository holding one published image, and its snapshot."""
    repo = str(tmp_path / "repo")
    src = write(tmp_path / "seed.raw", random_bytes(512 * KIB, 99) + bytes(256 * KIB))
    publish(src, repo, "seed")
    return repo, snapshot(repo)


def test_missing_or_unreadable_source(tmp_path, seeded):
    repo, before = seeded
    p = rd("publish", tmp_path / "nope.raw", "--repo", repo, "--name", "x")
    assert_one_line_error(p, "nope.raw", "No such file")
    p = rd("publish", tmp_path, "--repo", repo, "--name", "x")
    assert_one_line_error(p, "not a regular file")
    empty = write(tmp_path / "empty.raw", b"")
    assert_one_line_error(rd("publish", empty, "--repo", repo, "--name", "x"), "empty")
    assert snapshot(repo) == before


def test_truncated_or_corrupt_qcow2(tmp_path, seeded):
    repo, before = seeded
    raw = write(tmp_path / "q.raw", random_bytes(2 * MIB, 5))
    qcow = str(tmp_path / "q.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow], check=True)
    good = open(qcow, "rb").read()

    trunc = write(tmp_path / "trunc.qcow2", good[:len(good) // 2])
    assert_one_line_error(rd("publish", trunc, "--repo", repo, "--name", "t"), "qcow2")

    # qemu-img's complaint names the input, not the json: spec of /dev/fd/N it was given.
    version = bytearray(good)
    version[4:8] = (99).to_bytes(4, "big")
    ver = write(tmp_path / "version.qcow2", version)
    line = assert_one_line_error(rd("publish", ver, "--repo", repo, "--name", "v"),
                                 f"Could not open '{ver}'", "version 99")
    assert "json:" not in line and "/dev/fd/" not in line, line

    # Overwrite the first L1 table entry (offset from the header) with garbage.
    l1 = int.from_bytes(good[40:48], "big")
    bad = bytearray(good)
    bad[l1:l1 + 16] = b"\xff" * 16
    corrupt = write(tmp_path / "corrupt.qcow2", bad)
    assert_one_line_error(rd("publish", corrupt, "--repo", repo, "--name", "c"), "qcow2")

    header = bytearray(good)
    header[20:24] = (40).to_bytes(4, "big")  # cluster_bits out of range
    hdr = write(tmp_path / "hdr.qcow2", header)
    assert_one_line_error(rd("publish", hdr, "--repo", repo, "--name", "h"), "qcow2")
    assert snapshot(repo) == before


@pytest.mark.parametrize("opts", [["-F", "raw", "-b", "{secret}"],
                                  ["-o", "data_file={secret},data_file_raw=on"]],
                         ids=["backing_file", "data_file"])
def test_qcow2_reading_another_file_is_refused(tmp_path, seeded, opts):
    # A qcow2 naming a backing or data file would publish that host file's bytes.
    repo, before = seeded
    secret = write(tmp_path / "secret", b"secret!\n" * 8192)  # 64K: create keeps it whole
    evil = str(tmp_path / "evil.qcow2")
    args = [o.format(secret=secret) for o in opts]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, evil, "64K"],
                   check=True)
    secret_before = open(secret, "rb").read()
    line = assert_one_line_error(rd("publish", evil, "--repo", repo, "--name", "evil"),
                                 "evil.qcow2", "refused")
    assert ("backing file" if "-b" in opts else "external data file") in line
    assert snapshot(repo) == before
    assert open(secret, "rb").read() == secret_before


@pytest.mark.parametrize("size", ["1000", "32K", "32M", "100K", "96K", "abc", "0", "-64K", ""])
def test_bad_chunk_size(tmp_path, seeded, size):
    repo, before = seeded
    src = write(tmp_path / "x.raw", random_bytes(128 * KIB, 1))
    p = rd("publish", src, "--repo", repo, "--name", "x", "--chunk-size", size)
    assert_one_line_error(p, "chunk size")
    assert p.returncode == 2, "a bad option value is a usage error"
    assert snapshot(repo) == before


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a b", "tab\there", "bell\x07",
                                  "new\nline", ".hidden", "-opt", "", "index", "x" * 129])
def test_bad_name(tmp_path, seeded, name):
    repo, before = seeded
    src = write(tmp_path / "x.raw", random_bytes(128 * KIB, 1))
    p = rd("publish", src, "--repo", repo, "--name", name)
    assert_one_line_error(p, "name")
    assert p.returncode == 2, "a bad option value is a usage error"
    assert snapshot(repo) == before
    if name and not name.startswith("-"):  # "-opt" is an unknown option to show
        p = rd("show", "--repo", repo, name)
        assert_one_line_error(p, "invalid image name")


def test_name_spelled_like_an_image_id_is_refused(tmp_path, seeded):
    # show/verify read NAME as a tag first, then as an id: a tag of 64 hex digits would
    # hide the image with that id, so publish refuses such a name, in either case.
    repo, before = seeded
    seed_id, _ = manifest_of(repo, "seed")
    src = write(tmp_path / "x.raw", random_bytes(128 * KIB, 1))
    for name in (seed_id, seed_id.upper(), "0" * 64):
        p = rd("publish", src, "--repo", repo, "--name", name)
        assert_one_line_error(p, name, "64 hex digits", "image id")
        assert p.returncode == 2, "a bad option value is a usage error"
        assert snapshot(repo) == before
    assert json.loads(rd_ok("show", "--repo", repo, seed_id, "--json").stdout)["id"] == seed_id
    # 63 or 65 hex digits, or 64 characters that are not all hex, are names like any other.
    for name in ("a" * 63, "a" * 65, "g" + "a" * 63):
        publish(src, repo, name)


def test_image_too_big_for_a_manifest_is_refused_before_reading(tmp_path, seeded):
    # 4 TiB at 64K chunks is 64 Mi chunks: even all zero (null, 5 bytes each) the manifest
    # would pass the 256 MiB every reader enforces. Refused at once, before the input is
    # read (a sparse file: reading it would take many minutes), and nothing is written.
    repo, before = seeded
    src = str(tmp_path / "huge.raw")
    with open(src, "wb") as f:
        f.truncate(4 << 40)
    p = rd("publish", src, "--repo", repo, "--name", "huge", "--chunk-size", "64K",
           timeout=60)
    assert_one_line_error(p, "4.0 TiB", "manifest", "268435456-byte limit",
                          "--chunk-size 2M or larger")
    assert p.returncode == 1  # as for other bad input (an empty image, say)
    assert snapshot(repo) == before

def test_repository_path_too_long_for_its_names(tmp_path):
    # The repository path itself is legal, but chunks/<hh>/<hash> and manifests/<id>.json
    # under it would pass PATH_MAX (4096 with the NUL): publish must not truncate them.
    src = write(tmp_path / "x.raw", random_bytes(256 * KIB, 51))
    repo = str(tmp_path)
    while len(repo) < 4036 - 201:
        repo += "/" + "d" * 200
    repo += "/" + "r" * (4036 - len(repo) - 1)
    assert len(repo) == 4036
    p = rd("publish", src, "--repo", repo, "--name", "x")
    assert_one_line_error(p, "path too long")
    assert not os.path.exists(repo)


def test_unwritable_repository(tmp_path, mounts):
    src = write(tmp_path / "x.raw", random_bytes(256 * KIB, 2))
    # A file where the repository directory should be.
    notdir = write(tmp_path / "file", b"not a directory")
    assert_one_line_error(rd("publish", src, "--repo", notdir, "--name", "x"),
                          "cannot write")
    assert open(notdir, "rb").read() == b"not a directory"
    # A published repository on a filesystem that became read-only.
    repo = mounts(tmp_path / "ro", "size=4m")
    publish(src, repo, "first")
    subprocess.run(["mount", "-o", "remount,ro", repo], check=True)
    before = snapshot(repo)
    other = write(tmp_path / "y.raw", random_bytes(256 * KIB, 3))
    assert_one_line_error(rd("publish", other, "--repo", repo, "--name", "second"),
                          "cannot write", "Read-only")
    assert snapshot(repo) == before
    rd_ok("verify", "--repo", repo, "first")


def test_full_disk_leaves_no_tag_and_no_trace(tmp_path, mounts):
    repo = mounts(tmp_path / "small", "size=8m")
    first = write(tmp_path / "first.raw", random_bytes(MIB, 21))
    publish(first, repo, "first")
    before = snapshot(repo)
    big = write(tmp_path / "big.raw", random_bytes(16 * MIB, 22))
    for name in ("big", "first"):  # a new tag, and an existing one
        p = rd("publish", big, "--repo", repo, "--name", name)
        assert_one_line_error(p, "No space left on device")
        assert snapshot(repo) == before
        assert os.listdir(os.path.join(repo, "tmp")) == []
    assert not os.path.exists(os.path.join(repo, "tags", "big"))
    image_id, _ = manifest_of(repo, "first")
    assert image_id == json.loads(rd_ok("show", "--repo", repo, "first", "--json").stdout)["id"]
    rd_ok("verify", "--repo", repo, "first")
    # The disk had room for nothing only because of the big image: a small one still fits.
    publish(write(tmp_path / "small.raw", random_bytes(MIB, 23)), repo, "second")


def put_manifest(repo, name, raw):
    """Installs raw bytes as a manifest (under their hash) and points tag name at it."""
    image_id = hashlib.sha256(raw).hexdigest()
    write(os.path.join(repo, "manifests", image_id + ".json"), raw)
    write(os.path.join(repo, "tags", name), (image_id + "\n").encode())
    return image_id


@pytest.mark.parametrize("raw,reason", [
    (b'{"format":1,"size":', "malformed manifest"),
    (b'["not", "an", "object"]', "malformed manifest"),
    (b'{"format":2,"size":65536,"chunk_size":65536,"hash":"sha256","chunks":[null]}',
     "unknown manifest format 2"),
    (b'{"format":1,"size":200000,"chunk_size":65536,"hash":"sha256","chunks":[null]}',
     "sizes disagree"),
    (b'{"format":1,"size":65536,"chunk_size":1000,"hash":"sha256","chunks":[null]}',
     "chunk size"),
    (b'{"format":1,"size":65536,"chunk_size":65536,"hash":"sha256","chunks":["abc"]}',
     "bad hex"),
])
def test_bad_manifest(tmp_path, seeded, nginx_factory, raw, reason):
    repo, _ = seeded
    put_manifest(repo, "broken", raw)
    before = snapshot(repo)
    web = nginx_factory(servable(repo))
    for loc in (repo, web.url):
        for cmd in ("show", "verify"):
            assert_one_line_error(rd(cmd, "--repo", loc, "broken"), reason)
    assert snapshot(repo) == before
    rd_ok("verify", "--repo", repo, "seed")


def test_manifest_not_matching_its_id(tmp_path, seeded):
    repo, _ = seeded
    image_id, _ = manifest_of(repo, "seed")
    path = os.path.join(repo, "manifests", image_id + ".json")
    raw = open(path, "rb").read()
    write(path, raw.replace(b'"format":1', b'"format": 1'))  # still valid JSON
    assert_one_line_error(rd("verify", "--repo", repo, "seed"), "do not match its id")
    write(os.path.join(repo, "tags", "seed"), b"not-a-hash\n")
    assert_one_line_error(rd("show", "--repo", repo, "seed"), "does not hold an image id")
    assert_one_line_error(rd("show", "--repo", repo, "absent"), "no such image")


def test_bad_chunk_objects(tmp_path, seeded, nginx_factory):
    repo, _ = seeded
    _, manifest = manifest_of(repo, "seed")
    hashes = sorted({h for h in manifest["chunks"] if h})
    assert len(hashes) >= 5
    cs = manifest["chunk_size"]
    originals = {h: open(object_path(repo, h), "rb").read() for h in hashes}
    h_trunc, h_corrupt, h_size, h_hash, h_missing = hashes[:5]

    write(object_path(repo, h_trunc), originals[h_trunc][:len(originals[h_trunc]) // 2])
    write(object_path(repo, h_corrupt), random_bytes(len(originals[h_corrupt]), 8))
    write(object_path(repo, h_size), zstd_encode(random_bytes(cs // 2, 9), tmp_path))
    write(object_path(repo, h_hash), zstd_encode(random_bytes(cs, 10), tmp_path))
    os.unlink(object_path(repo, h_missing))
    before = snapshot(repo)

    web = nginx_factory(servable(repo))
    for loc in (repo, web.url):
        p = rd("verify", "--repo", loc, "seed")
        assert p.returncode != 0
        lines = sorted(line for line in p.stderr.splitlines() if line)
        assert len(lines) == 5, p.stderr
        got = {}
        for line in lines:
            assert line.startswith("rackdisk: chunk ")
            h = next(h for h in hashes if h in line)
            got[h] = line.rsplit(": ", 1)[1]
        assert got == {h_trunc: "truncated", h_corrupt: "corrupt", h_size: "wrong size",
                       h_hash: "wrong hash", h_missing: "missing"}
        assert "5 bad" in p.stdout
    assert snapshot(repo) == before


def test_verify_checks_a_short_last_chunk_at_its_own_length(tmp_path, seeded):
    # The last chunk (100 bytes) names the hash of a full 64K chunk: that object decodes to
    # 64K, so chunk 1 can never be read, even though chunk 0 reads fine.
    repo, _ = seeded
    _, manifest = manifest_of(repo, "seed")
    h = manifest["chunks"][0]
    cs = manifest["chunk_size"]
    raw = json.dumps({"format": 1, "size": cs + 100, "chunk_size": cs, "hash": "sha256",
                      "chunks": [h, h]}, separators=(",", ":")).encode()
    put_manifest(repo, "short", raw)
    p = rd("verify", "--repo", repo, "short")
    assert p.returncode != 0
    assert p.stderr == f"rackdisk: chunk 1 ({h}): wrong size\n"
    assert "2 objects checked, 1 bad" in p.stdout


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test server's handler: answer() sends a whole reply; nothing is logged."""

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _http_servers(make_handler):
    """A fixture body: yields serve(root), which starts a threaded HTTP server on a free
    loopback port with make_handler(root)'s class and returns its URL; every server is
    stopped at teardown."""
    servers = []

    def serve(root):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(root))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield serve
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def wordy_404_server():
    """serve(root) starts an HTTP server on a free loopback port whose 404 page is 8 KiB
    (more than any tag file may hold); returns its URL. Stopped at teardown."""
    def handler(root):
        class Handler(_QuietHandler):
            def do_GET(self):
                path = os.path.join(root, self.path.lstrip("/"))
                if os.path.isfile(path):
                    self.answer(200, open(path, "rb").read())
                else:
                    self.answer(404, b"<html>" + b"not found " * 800 + b"</html>")
        return Handler

    yield from _http_servers(handler)


def test_big_404_page_means_missing(seeded, wordy_404_server):
    repo, _ = seeded
    image_id, _ = manifest_of(repo, "seed")
    url = wordy_404_server(repo)
    assert_one_line_error(rd("show", "--repo", url, "absent"), "absent", "no such image")
    # No tag of that name: the 64-hex name is taken as an image id.
    show = json.loads(rd_ok("show", "--repo", url, image_id, "--json").stdout)
    assert show["id"] == image_id
    rd_ok("verify", "--repo", url, image_id)


def test_usage_errors(tmp_path):
    for args in (["publish", "x", "--name", "n"], ["verify", "--repo", str(tmp_path)],
                 ["frobnicate"], ["ls", "--repo", str(tmp_path), "--bogus"]):
        p = rd(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("rackdisk: ")
    p = rd("publish", tmp_path / "x", "--repo", "http://127.0.0.1:1/r", "--name", "n")
    assert_one_line_error(p, "not a URL")
    with socket.socket() as s:  # a port that nothing listens on while the socket is open
        s.bind(("127.0.0.1", 0))
        hostport = f"127.0.0.1:{s.getsockname()[1]}"
        p = rd("ls", "--repo", f"http://{hostport}/r")
    assert_one_line_error(p, hostport)


def test_repo_locations_mean_one_place_or_are_refused(tmp_path):
    """--repo file://localhost/ABS is the directory /ABS (not ./localhost/ABS), for publish
    and for the readers; another scheme (s3://) is a usage error, not a directory ./s3:/."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    repo = str(tmp_path / "repo")
    src = write(tmp_path / "x.raw", random_bytes(256 * KIB, 43))

    def run(*args):
        return subprocess.run([RACKDISK, "image", *map(str, args)], capture_output=True,
                              text=True, timeout=120, cwd=cwd)

    url = "file://localhost" + repo
    p = run("publish", src, "--repo", url, "--name", "x", "--chunk-size", "64K")
    assert p.returncode == 0, p.stderr
    _, manifest = manifest_of(repo, "x")
    assert reassemble(repo, manifest) == open(src, "rb").read()
    for args in (("ls", "--repo", url), ("show", "--repo", url, "x"),
                 ("verify", "--repo", url, "x"), ("ls", "--repo", "file://" + repo)):
        p = run(*args)
        assert p.returncode == 0, (args, p.stderr)
    assert "x" in run("ls", "--repo", url).stdout
    for args in (("publish", src, "--repo", "s3://bucket/repo", "--name", "x"),
                 ("ls", "--repo", "s3://bucket/repo"),
                 ("verify", "--repo", "s3://bucket/repo", "x")):
        p = run(*args)
        line = assert_one_line_error(p, "s3://bucket/repo", "unsupported repository scheme")
        assert p.returncode == 2, line
    p = run("publish", src, "--repo", "file://otherhost" + repo, "--name", "x")
    assert_one_line_error(p, "file://")
    assert p.returncode == 2
    assert os.listdir(cwd) == []


@pytest.fixture
def quirky_server():
    """serve(root) starts an HTTP server on a free loopback port over the repository root:
    /moved/P redirects (302) to /P, /bigmoved/P too (301) with an 8 KiB page, /broken/P
    answers 500, /nochunks/P serves P except chunk objects (500), /huge/P answers 200 with a
    Content-Length of 32 MiB. Returns its URL; stopped at teardown."""
    def handler(root):
        class Handler(_QuietHandler):
            def do_GET(self):
                prefix, _, rest = self.path.lstrip("/").partition("/")
                path = os.path.join(root, rest)
                if prefix == "moved":
                    self.answer(302, b"", [("Location", "/ok/" + rest)])
                elif prefix == "bigmoved":
                    self.answer(301, b"<html>" + b"moved " * 1400 + b"</html>",
                                [("Location", "/ok/" + rest)])
                elif prefix == "huge":  # announces 32 MiB, sends 8 KiB, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", str(32 << 20))
                    self.end_headers()
                    try:
                        self.wfile.write(b"x" * 8192)
                    except OSError:
                        pass
                    self.close_connection = True
                elif prefix == "broken" or (prefix == "nochunks" and
                                            rest.startswith("chunks/")):
                    self.answer(500, b"oops")
                elif os.path.isfile(path):
                    self.answer(200, open(path, "rb").read())
                else:
                    self.answer(404, b"")
        return Handler

    yield from _http_servers(handler)


def test_http_redirects_are_followed_and_failures_say_what_failed(seeded, quirky_server):
    """A repository behind a redirect is read (the seed client follows redirects; show,
    ls and verify answered "Input/output error"); a failed request names its HTTP status or
    what the connection ran into, and the URL, not "Input/output error"."""
    repo, _ = seeded
    url = quirky_server(repo)
    show = json.loads(rd_ok("show", "--repo", url + "/moved", "seed", "--json").stdout)
    assert show["id"] == manifest_of(repo, "seed")[0]
    assert "seed" in rd_ok("ls", "--repo", url + "/moved").stdout
    rd_ok("verify", "--repo", url + "/moved", "seed")
    # A redirect's page is not the object: its size (over a tag's 4 KiB) is not "too big".
    show = json.loads(rd_ok("show", "--repo", url + "/bigmoved", "seed", "--json").stdout)
    assert show["id"] == manifest_of(repo, "seed")[0]
    # An object announced over its bound fails at once, not once the bound has arrived.
    assert_one_line_error(rd("ls", "--repo", url + "/huge", timeout=20),
                          f"GET {url}/huge/tags/index: larger than the 16777216 bytes allowed")
    for args in (("show", "--repo", url + "/broken", "seed"), ("ls", "--repo", url + "/broken"),
                 ("verify", "--repo", url + "/nochunks", "seed")):
        line = assert_one_line_error(rd(*args), "HTTP 500", url)
        assert "Input/output error" not in line
    with socket.socket() as s:  # a port that nothing listens on while the socket is open
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/r"
        for args in (("ls", "--repo", refused), ("show", "--repo", refused, "seed")):
            line = assert_one_line_error(rd(*args), "connect", refused)
            assert "Input/output error" not in line


def test_credentials_in_a_repo_url_are_never_shown(tmp_path, seeded, quirky_server):
    """A repository behind basic authentication (http://user:password@host/) is read, and
    no error line shows its user:password@ (ls printed the password twice)."""
    repo, _ = seeded
    host = quirky_server(repo)[len("http://"):]
    url = f"http://user:s3cret@{host}"
    assert "seed" in rd_ok("ls", "--repo", url + "/moved").stdout
    with socket.socket() as s:  # a port that nothing listens on while the socket is open
        s.bind(("127.0.0.1", 0))
        refused = f"http://user:s3cret@127.0.0.1:{s.getsockname()[1]}/r"
        cases = [(("ls", "--repo", url + "/broken"), f"http://{host}/broken", "HTTP 500"),
                 (("show", "--repo", url + "/broken", "seed"), f"http://{host}/broken", ""),
                 (("verify", "--repo", url + "/nochunks", "seed"), f"http://{host}/nochunks",
                  "HTTP 500"),
                 (("ls", "--repo", refused), refused.replace("user:s3cret@", ""), "connect"),
                 (("publish", tmp_path / "x", "--repo", url, "--name", "x"), "not a URL", ""),
                 (("ls", "--repo", "ftp://user:s3cret@h/r"), "ftp://h/r", "unsupported")]
        for args, where, why in cases:
            line = assert_one_line_error(rd(*args), where, why)
            assert "s3cret" not in line and "user" not in line, line

def start_slow_publish(tmp_path, repo, name, seed):
    """A publish that takes seconds (16 MiB of random data, zstd level 19, one worker),
    returned as a Popen once its first temporary chunk object is in tmp/. If it never
    gets there, it is killed before the failure is raised (the caller's cleanup does not
    know of it yet)."""
    src = write(tmp_path / f"{name}.raw", random_bytes(16 * MIB, seed))
    tmp = os.path.join(repo, "tmp")
    before = set(os.listdir(tmp)) if os.path.isdir(tmp) else set()
    proc = subprocess.Popen([RACKDISK, "image", "publish", src, "--repo", repo, "--name", name,
                             "--chunk-size", "64K", "--level", "19", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    try:
        while not (os.path.isdir(tmp) and
                   any(n.startswith("c.") for n in set(os.listdir(tmp)) - before)):
            assert proc.poll() is None, f"publish ended early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "publish wrote no temporary object in 30 s"
            time.sleep(0.01)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, src


def run_files(repo, exclude=()):
    """The temporary files in repo/tmp, minus those in exclude."""
    return sorted(set(os.listdir(os.path.join(repo, "tmp"))) - set(exclude))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_interrupted_publish_removes_its_temporary_files(tmp_path, sig):
    """SIGINT or SIGTERM: the publish stops, removes what it wrote in tmp/ (its objects,
    hundreds of MiB for a big image, used to stay for three days) and ends by the signal."""
    repo = str(tmp_path / "repo")
    proc, _ = start_slow_publish(tmp_path, repo, "x", 51)
    try:
        proc.send_signal(sig)
        proc.wait(60)
        err = proc.stderr.read()
        assert run_files(repo) == []
        assert proc.returncode == -sig, err
        assert "interrupted" in err
        assert not os.path.exists(os.path.join(repo, "tags", "x"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_publish_is_swept_by_the_next_but_a_live_one_is_not(tmp_path):
    """A publish killed mid-run (SIGKILL: no cleanup of its own) leaves its objects in
    tmp/; the next publish removes them at once, since no process holds that run's lock. A
    live publish's files (here: stopped with SIGSTOP, holding its lock) stay, and it then
    completes."""
    repo = str(tmp_path / "repo")
    procs = []
    try:
        dead, _ = start_slow_publish(tmp_path, repo, "dead", 52)
        procs.append(dead)
        dead.kill()
        dead.wait(30)
        dead_files = run_files(repo)
        assert any(n.startswith("c.") for n in dead_files), dead_files
        live, live_src = start_slow_publish(tmp_path, repo, "live", 53)
        procs.append(live)
        live.send_signal(signal.SIGSTOP)
        live_files = run_files(repo, dead_files)
        assert any(n.startswith("c.") for n in live_files), live_files
        publish(write(tmp_path / "small.raw", random_bytes(256 * KIB, 54)), repo, "small")
        left = run_files(repo)
        assert not set(dead_files) & set(left), left
        assert set(live_files) <= set(left), (live_files, left)
        live.send_signal(signal.SIGCONT)
        assert live.wait(120) == 0, live.stderr.read()
        _, manifest = manifest_of(repo, "live")
        assert reassemble(repo, manifest) == open(live_src, "rb").read()
        assert run_files(repo) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
