"""Helpers for the cluster integration tests: published images, cluster nodes
(build/tests/cluster_node: chunk store + fetcher + peering, wired as rackdiskd wires
them) driven over stdin/stdout, and a lying proxy in front of a node's peer server."""
import hashlib
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from servers import BUILD, free_port

CLUSTER_NODE = os.path.join(BUILD, "tests", "cluster_node")
RACKDISK = os.path.join(BUILD, "rackdisk")
TOKEN = "cluster-test-token"


def make_www():
    """A world-readable directory (nginx workers cannot enter pytest's tmp_path)."""
    d = tempfile.mkdtemp(prefix="rd-cluster-")
    os.chmod(d, 0o755)
    return d


def publish(tmp_path, www, name, nchunks=24, chunk_size="128K"):
    """Publishes an image of random, distinct chunks. Returns (repo, chunks) where
    chunks is [(hex, len)] of every chunk, in order."""
    cs = {"64K": 64 * 1024, "128K": 128 * 1024, "256K": 256 * 1024}[chunk_size]
    data = os.urandom(cs * nchunks)
    src = Path(tmp_path) / f"{name}.raw"
    src.write_bytes(data)
    repo = Path(www) / "repo"
    subprocess.run([RACKDISK, "image", "publish", str(src), "--repo", str(repo), "--name",
                    name, "--chunk-size", chunk_size], check=True, capture_output=True,
                   timeout=60)
    image_id = (repo / "tags" / name).read_text().strip()
    m = json.loads((repo / "manifests" / f"{image_id}.json").read_text())
    chunks = [(h, cs) for h in m["chunks"] if h]
    return repo, chunks


def write_list(path, chunks):
    with open(path, "w") as f:
        for h, n in chunks:
            f.write(f"{h} {n}\n")
    return str(path)


def stored(store):
    """{hex: bytes} of the store's chunk files, each checked against its name."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(str(store), "chunks")):
        for f in files:
            if len(f) == 64:
                data = open(os.path.join(dirpath, f), "rb").read()
                assert hashlib.sha256(data).hexdigest() == f, f"corrupt stored chunk {f}"
                out[f] = data
    return out


def seed_gets(nginx):
    return [l for l in nginx.requests("GET /chunks/") if '" 200 ' in l]


class Node:
    """One cluster_node process. cmd() sends a command line and returns its JSON answer."""

    def __init__(self, workdir, name, seed_url, redis_url, rack="r1", advertise=None,
                 port=None, **opts):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.advertise = advertise or f"127.0.0.1:{self.port}"
        self.store = self.dir / "store"
        tok = self.dir / "token"
        tok.write_text(TOKEN + "\n")
        self.args = [CLUSTER_NODE, "--store", str(self.store), "--seed", seed_url,
                     "--redis", redis_url, "--name", name, "--rack", rack,
                     "--listen", f"127.0.0.1:{self.port}", "--advertise", self.advertise,
                     "--token-file", str(tok)]
        defaults = {"lease_wait_ms": 8000, "lease_ttl_ms": 900, "heartbeat_ttl_ms": 2000,
                    "peer_timeout_ms": 3000}
        defaults.update(opts)
        for k, v in defaults.items():
            self.args += ["--" + k.replace("_", "-"), str(v)]
        self.proc = None
        self.log = None
        self.ready = None
        self.pending = []   # answers read while waiting for another kind

    def start(self, timeout=15):
        self.log = open(self.dir / "stderr.log", "w")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1,
                                     env=dict(os.environ, no_proxy="*"))
        try:
            self.ready = self._read(timeout)
        except BaseException:
            self.stop()  # quit, SIGKILL if need be: a failed start leaves no process
            raise
        return self

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited: {self.stderr()}")
                return json.loads(line)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                   f"{self.stderr()}")
        raise TimeoutError(f"{self.name}: no answer within {timeout}s")

    def _answer(self, event, timeout):
        """The next answer of this kind (fetches run in the background, so answers of
        other kinds may come first: they are kept for later)."""
        for i, a in enumerate(self.pending):
            if a.get("event") in (event, "error"):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            a = self._read(max(0.1, deadline - time.monotonic()))
            if a.get("event") in (event, "error"):
                return a
            self.pending.append(a)

    def cmd(self, line, timeout=60):
        self.send(line)
        return self._answer(line.split()[0], timeout)

    def fetch(self, listfile, threads=4, deadline_ms=20000, timeout=90):
        self.send(f"fetch {listfile} {threads} {deadline_ms}")
        return self.collect(timeout)

    def send(self, line):
        """Sends a command without waiting (collect() reads a fetch's answer)."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def collect(self, timeout=90):
        return self._answer("fetched", timeout)

    def stats(self):
        return self.cmd("stats")

    def stderr(self):
        try:
            return (self.dir / "stderr.log").read_text()[-3000:]
        except OSError:
            return ""

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        if self.log:
            self.log.close()
        self.proc = None


class LyingProxy:
    """HTTP proxy in front of a peer server that flips one byte of every chunk body."""

    def __init__(self, upstream_port):
        self.port = free_port()
        self.requests = 0
        up = upstream_port
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests += 1
                req = urllib.request.Request(f"http://127.0.0.1:{up}{self.path}")
                auth = self.headers.get("Authorization")
                if auth:
                    req.add_header("Authorization", auth)
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        body, status = bytearray(r.read()), r.status
                except urllib.error.HTTPError as e:
                    body, status = bytearray(e.read()), e.code
                if status == 200 and body:
                    body[len(body) // 2] ^= 0xFF
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(bytes(body))

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def http_get(port, path, token=None, method="GET"):
    """(status, body) of one request to a peer server."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rmtree(d):
    shutil.rmtree(d, ignore_errors=True)
