"""scripts/deps.sh's policy-rc.d: while it installs packages it writes /usr/sbin/policy-rc.d
(exit 101) so that Debian does not start the packaged services; a copy left behind would
keep every package on the machine from starting its services. It must be gone after the
install whether apt-get succeeded, failed (set -e) or the script was killed meanwhile, and
a policy-rc.d the machine already had must be left as it was.

The script runs unchanged, from a copy in a temporary tree (it works relative to its own
directory), with apt-get and dpkg-query replaced by stubs on PATH, in a private mount
namespace whose /usr/sbin is an empty directory of the test's: nothing on the machine is
touched, and the directory shows what the script left."""
import os
import shutil
import stat
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DEPS = os.path.join(HERE, "..", "..", "scripts", "deps.sh")

# Every package is missing, except tgt, whose source is already unpacked (stamp below):
# the script installs and does nothing else.
DPKG_QUERY = """#!/bin/sh
case "$*" in *Version*) printf 1.0 ;; *) exit 1 ;; esac
"""
# Records whether a policy-rc.d was there during the install, then succeeds, fails, or
# sends the script SIGTERM (as `kill` or a stopping service manager would) and succeeds.
APT_GET = """#!/bin/sh
[ "$1" = install ] || exit 0
if [ -e /usr/sbin/policy-rc.d ]; then echo present >> "$APT_LOG"; else echo absent >> "$APT_LOG"; fi
case "$APT_STUB" in
ok) exit 0 ;;
fail) exit 100 ;;
term) kill -TERM "$PPID"; sleep 0.2; exit 0 ;;
esac
"""


def write_exec(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def run_deps(tmp_path, mode, existing=None):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (a private mount namespace)")
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / "build" / "deps").mkdir(parents=True)
    (tree / "build" / "deps" / "tgt.version").write_text("1.0\n")
    shutil.copy(DEPS, tree / "scripts" / "deps.sh")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    write_exec(stubs / "dpkg-query", DPKG_QUERY)
    write_exec(stubs / "apt-get", APT_GET)
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    if existing is not None:
        (sbin / "policy-rc.d").write_text(existing)
        os.chmod(sbin / "policy-rc.d", 0o644)
    log = tmp_path / "apt.log"
    env = dict(os.environ, PATH=f"{stubs}:/usr/bin:/bin", APT_STUB=mode, APT_LOG=str(log))
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         'mount --bind "$1" /usr/sbin && exec bash "$2"', "_", str(sbin),
         str(tree / "scripts" / "deps.sh")],
        env=env, capture_output=True, text=True, timeout=60)
    return p, log.read_text().split() if log.exists() else [], sbin / "policy-rc.d"


@pytest.mark.parametrize("mode,rc", [("ok", 0), ("fail", 100), ("term", 143)])
def test_policy_rc_d_is_removed_whatever_the_install_did(tmp_path, mode, rc):
    p, seen, policy = run_deps(tmp_path, mode)
    assert p.returncode == rc, p.stderr
    assert seen == ["present"], "services were not held back during the install"
    assert not policy.exists(), f"deps.sh left policy-rc.d behind ({mode})"


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_existing_policy_rc_d_is_left_as_it_was(tmp_path, mode):
    mine = "#!/bin/sh\n# the operator's\nexit 0\n"
    p, seen, policy = run_deps(tmp_path, mode, existing=mine)
    assert seen == ["present"], p.stderr
    assert policy.read_text() == mine
    assert stat.S_IMODE(policy.stat().st_mode) == 0o644
