"""Cold seed fetch throughput: fetchtool reading a whole image through the fetcher
(parallel workers, keep-alive, readahead, decode + hash check + store insert) against
curl downloading the same image as one raw file from the same nginx. Prints both times
and their ratio; asserts nothing.

    /usr/bin/python3 tests/tools/seed_bench.py [SIZE_MIB] [CHUNK]   (make bench-seed)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from servers import BUILD, Nginx  # noqa: E402


def main():
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    chunk = sys.argv[2] if len(sys.argv) > 2 else "1M"
    work = tempfile.mkdtemp(prefix="rd-seed-bench-")
    os.chmod(work, 0o755)
    nginx = None
    try:
        www = os.path.join(work, "www")
        os.makedirs(www)
        raw = os.path.join(www, "image.raw")
        # Half random, half text-like: realistic compression, nothing all-zero.
        with open(raw, "wb") as f:
            for i in range(size_mib):
                f.write(os.urandom(512 * 1024))
                f.write((b"rackdisk %08d " % i) * (512 * 1024 // 18) + b"\n" * (512 * 1024 % 18))
        subprocess.run([os.path.join(BUILD, "rackdisk"), "image", "publish", raw, "--repo",
                        os.path.join(www, "repo"), "--name", "bench", "--chunk-size", chunk],
                       check=True, capture_output=True)
        repo = os.path.join(www, "repo")
        image_id = open(os.path.join(repo, "tags", "bench")).read().strip()
        manifest = os.path.join(repo, "manifests", image_id + ".json")
        nginx = Nginx(www, os.path.join(work, "nginx")).start()

        t0 = time.monotonic()
        subprocess.run(["curl", "-sf", "-o", "/dev/null", nginx.url + "/image.raw"], check=True)
        t_curl = time.monotonic() - t0

        t0 = time.monotonic()
        p = subprocess.run([os.path.join(BUILD, "tests", "fetchtool"), "--store",
                            os.path.join(work, "store"), "--seed", nginx.url + "/repo",
                            "--image", manifest, "--workers", "8", "--readahead", "8",
                            "--deadline-ms", "60000"], capture_output=True, text=True)
        t_fetch = time.monotonic() - t0
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            sys.exit(1)
        st = json.loads(p.stdout)["stats"]

        # The same read from the repository as a local directory: no HTTP at all, so
        # what remains is decoding, hashing and the store's inserts (write, fsync,
        # rename): the floor under the HTTP figure.
        t0 = time.monotonic()
        subprocess.run([os.path.join(BUILD, "tests", "fetchtool"), "--store",
                        os.path.join(work, "store2"), "--seed", repo, "--image", manifest,
                        "--workers", "8", "--readahead", "8", "--deadline-ms", "60000"],
                       capture_output=True, check=True)
        t_dir = time.monotonic() - t0
        print(f"seed cold read, {size_mib} MiB image, {chunk} chunks, same nginx:")
        print(f"  curl raw image (baseline)      {t_curl:7.3f} s  "
              f"{size_mib / t_curl:8.1f} MiB/s")
        print(f"  fetcher, 8 workers, readahead 8 {t_fetch:7.3f} s  "
              f"{size_mib / t_fetch:8.1f} MiB/s  ratio {t_fetch / t_curl:.2f}x "
              f"(includes process start and store open)")
        print(f"  fetcher from a directory seed  {t_dir:7.3f} s  "
              f"{size_mib / t_dir:8.1f} MiB/s  (no HTTP: decode + hash + store insert)")
        print(f"  seed requests {st['seed_requests']}, connections {st['seed_connects']}, "
              f"readahead {st['readahead']}, coalesced {st['coalesced']}")
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
