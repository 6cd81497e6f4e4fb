"""Helpers for the seed fault tests (and the cold benchmark):

- IscsiSession: one READ at a time through libiscsi (ctypes on libiscsi.so.7), with no
  retry. QEMU retries BUSY several times with growing backoff, which hides the target's
  own deadline; a single libiscsi command shows exactly how and when the target answers.
- SeedServer: the seed's nginx, restartable on the same port with other directives
  (limit_rate) so that a running appliance keeps its seed URL.
- StalledSeed: a seed that accepts connections and never answers (every fetch waits out
  its request timeout), so that a read that misses waits for its whole deadline.
- chunk_objects(): the manifest's chunks and their objects in a repository, to pick an
  uncached chunk and to corrupt objects.
"""
import ctypes
import json
import os
import re
import select
import socket
import threading
import time

from servers import Nginx

_lib = None


def _libiscsi():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libiscsi.so.7")
        lib.iscsi_create_context.restype = ctypes.c_void_p
        lib.iscsi_create_context.argtypes = [ctypes.c_char_p]
        for name in ("iscsi_set_targetname", ):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.iscsi_set_session_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.iscsi_set_header_digest.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.iscsi_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.iscsi_full_connect_sync.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.iscsi_get_error.restype = ctypes.c_char_p
        lib.iscsi_get_error.argtypes = [ctypes.c_void_p]
        lib.iscsi_read16_sync.restype = ctypes.POINTER(ScsiTask)
        lib.iscsi_read16_sync.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                                          ctypes.c_uint32, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int]
        lib.scsi_free_scsi_task.argtypes = [ctypes.POINTER(ScsiTask)]
        lib.iscsi_logout_sync.argtypes = [ctypes.c_void_p]
        lib.iscsi_destroy_context.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


class ScsiTask(ctypes.Structure):
    """The head of libiscsi's struct scsi_task (scsi-lowlevel.h, soname 7), up to datain:
    status, then sense key and ascq, then the data-in buffer."""
    _fields_ = [("status", ctypes.c_int), ("cdb_size", ctypes.c_int),
                ("xfer_dir", ctypes.c_int), ("expxferlen", ctypes.c_int),
                ("cdb", ctypes.c_ubyte * 16), ("residual_status", ctypes.c_int),
                ("residual", ctypes.c_size_t), ("sense_error_type", ctypes.c_ubyte),
                ("sense_key", ctypes.c_int), ("sense_ascq", ctypes.c_int),
                ("sense_rest", ctypes.c_uint), ("datain_size", ctypes.c_int),
                ("datain_data", ctypes.POINTER(ctypes.c_ubyte))]


assert ScsiTask.sense_key.offset == 52 and ScsiTask.datain_size.offset == 64


STATUS_GOOD, STATUS_CHECK_CONDITION, STATUS_BUSY = 0x00, 0x02, 0x08


class IscsiSession:
    """A logged-in libiscsi session on the LUN of an iscsi://HOST:PORT/IQN/LUN URL."""

    def __init__(self, url, initiator="iqn.2026-11.io.rackdisk.test:faults", timeout_s=60):
        m = re.match(r"iscsi://([^/]+)/([^/]+)/(\d+)$", url)
        assert m, url
        self.portal, self.iqn, self.lun = m.group(1), m.group(2), int(m.group(3))
        lib = _libiscsi()
        self.ctx = lib.iscsi_create_context(initiator.encode())
        assert self.ctx
        lib.iscsi_set_targetname(self.ctx, self.iqn.encode())
        lib.iscsi_set_session_type(self.ctx, 2)   # ISCSI_SESSION_NORMAL
        lib.iscsi_set_header_digest(self.ctx, 0)  # ISCSI_HEADER_DIGEST_NONE
        # A command without an answer after this many seconds fails instead of hanging.
        lib.iscsi_set_timeout(self.ctx, timeout_s)
        if lib.iscsi_full_connect_sync(self.ctx, self.portal.encode(), self.lun):
            err = lib.iscsi_get_error(self.ctx)
            lib.iscsi_destroy_context(self.ctx)
            self.ctx = None
            raise OSError(f"iSCSI login to {url} failed: {err}")

    def read(self, offset, length, block=512):
        """One READ(16). Returns (status, sense_key, ascq, data or None, seconds);
        status None when the command got no answer (libiscsi timeout, connection lost)."""
        lib = _libiscsi()
        t0 = time.monotonic()
        task = lib.iscsi_read16_sync(self.ctx, self.lun, offset // block, length, block,
                                     0, 0, 0, 0, 0)
        dt = time.monotonic() - t0
        if not task:
            return None, None, None, None, dt
        t = task.contents
        data = None
        if t.status == STATUS_GOOD and t.datain_data:
            data = ctypes.string_at(t.datain_data, t.datain_size)
        out = (t.status, t.sense_key, t.sense_ascq, data, dt)
        lib.scsi_free_scsi_task(task)
        return out

    def close(self):
        if self.ctx:
            lib = _libiscsi()
            lib.iscsi_logout_sync(self.ctx)
            lib.iscsi_destroy_context(self.ctx)
            self.ctx = None


class SeedServer:
    """nginx serving repo on a fixed port; restart(extra) swaps the server directives."""

    def __init__(self, nginx):
        self.nginx = nginx
        self.repo = nginx.root
        self.port = nginx.port
        self.base = nginx.dir
        self.n = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.nginx:
            self.nginx.stop()
            self.nginx = None

    def restart(self, extra=""):
        self.stop()
        self.n += 1
        self.nginx = Nginx(self.repo, f"{self.base}.{self.n}", port=self.port,
                           extra=extra).start()
        return self


class StalledSeed:
    """Listens on 127.0.0.1:port (a stopped seed's, so that a running appliance keeps its
    seed URL), accepts every connection and never answers. `accepted` counts connections:
    one means a fetch has reached the seed and waits. A context manager."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.conns = []
        self.accepted = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.done.is_set():
            if select.select([self.sock], [], [], 0.1)[0]:
                conn, _ = self.sock.accept()
                self.conns.append(conn)  # kept open, never read or answered
                self.accepted += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.done.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def chunk_objects(repo, tag):
    """[(index, hash or None, object path or None)] for the image a tag names."""
    with open(os.path.join(repo, "tags", tag)) as f:
        image_id = f.read().strip()
    with open(os.path.join(repo, "manifests", image_id + ".json")) as f:
        man = json.load(f)
    chunks = man["chunks"]
    out = []
    for i, c in enumerate(chunks):
        h = c if isinstance(c, str) or c is None else c.get("hash")
        out.append((i, h, os.path.join(repo, "chunks", h[:2], h) if h else None))
    return out, man
