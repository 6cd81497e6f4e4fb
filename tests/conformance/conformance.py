#!/usr/bin/python3
"""iscsi-test-cu against a rackdisk LUN and against tgt's rdwr store on a raw file of the
same bytes, one suite per run, both LUNs in one private tgtd.

    conformance.py [--full] [--suite NAME]... [--json FILE]

Default: the suites that exercise the backing store (reads, writes, verify, compare and
write, orwrite, write same, unmap, get lba status, prefetch, sync) plus the mandatory
ones; --full runs every SCSI.* suite.

Each test ends as passed, skipped or failed. iscsi-test-cu skips a test by logging
"[SKIPPED] ..." and calling CU_PASS, which CUnit counts as a success (its XML report
has no trace of it), so the runs use CUnit's verbose console mode: its "Test: NAME ..."
line opens each test, the test's own log follows, then "passed" or "FAILED". A passed
test that logged a [SKIPPED] marker counts as skipped. The per-test results are checked
against the run summary CUnit prints at the end (tests run, failed).

Prints, per suite, passed/total and skipped on both stores, then every test that passed
(ran and passed, no [SKIPPED]) on rdwr and was skipped, failed or missing on rackdisk;
exits 1 if there is one, if a suite ran no test or its output did not parse, or if no
suite ran at all (e.g. `iscsi-test-cu -l` failed with --full); 0 otherwise.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from tgt_helpers import Tgtd, install_module, make_disk, make_raw  # noqa: E402

QUICK = ["CompareAndWrite", "GetLBAStatus", "Inquiry", "Mandatory", "OrWrite", "Prefetch10",
         "Prefetch16", "Read6", "Read10", "Read12", "Read16", "ReadCapacity16",
         "ReportSupportedOpcodes", "TestUnitReady", "Unmap", "Verify10", "Verify12", "Verify16",
         "Write10", "Write12", "Write16", "WriteSame10", "WriteSame16", "WriteVerify10",
         "WriteVerify12", "WriteVerify16"]
IMAGE_SIZE = 64 << 20
SUITE_TIMEOUT = 600


def all_suites():
    """The SCSI.* suites `iscsi-test-cu -l` lists; [] if it fails or lists none."""
    try:
        p = subprocess.run(["iscsi-test-cu", "-l"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"iscsi-test-cu -l: {e}", file=sys.stderr)
        return []
    if p.returncode != 0:
        print(f"iscsi-test-cu -l exited {p.returncode}: {p.stderr.strip()}", file=sys.stderr)
        return []
    return [m.group(1) for m in re.finditer(r"^SCSI\.([A-Za-z0-9_-]+)$", p.stdout, re.M)]


PASS, SKIP, FAIL = "pass", "skip", "fail"

# CUnit's verbose console mode (Basic.c): "\n  Test: NAME ..." when a test starts,
# "passed" or "FAILED" (then "\n    1. file:line  - message" per failure) when it ends.
# What the test logs comes in between, each line indented by four spaces (the first one
# right after the "..."); what the teardown logs follows the verdict, on its line.
_TEST_START = re.compile(r"^  Test: (\S+) \.\.\.", re.M)
_VERDICT_AFTER_START = re.compile(r"(passed|FAILED)\b")
_VERDICT_LINE = re.compile(r"^(passed|FAILED)\b", re.M)
_SUMMARY = re.compile(r"^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.M)


def parse_output(text):
    """{test: PASS/SKIP/FAIL} from one iscsi-test-cu run's stdout (verbose mode).
    Raises ValueError when the per-test verdicts do not add up to CUnit's run summary
    (tests run and failed), i.e. when the format is not the one this parser knows."""
    results = {}
    starts = list(_TEST_START.finditer(text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[m.end():end]
        verdict = _VERDICT_AFTER_START.match(body) or _VERDICT_LINE.search(body)
        if verdict is None:
            # No verdict: the run died inside this test.
            results[m.group(1)] = FAIL
        elif verdict.group(1) == "FAILED":
            results[m.group(1)] = FAIL
        else:
            # Only the test's own log, before its verdict.
            results[m.group(1)] = SKIP if "[SKIPPED]" in body[:verdict.start()] else PASS
    s = _SUMMARY.search(text)
    if s is None:
        if results:
            raise ValueError("no CUnit run summary after the tests: iscsi-test-cu stopped "
                             "early (see its output.txt, --keep)")
        return results
    ran, failed = int(s.group(2)), int(s.group(4))
    nfail = sum(v == FAIL for v in results.values())
    if ran != len(results) or failed != nfail:
        raise ValueError(f"parsed {len(results)} tests, {nfail} failed; "
                         f"CUnit's summary says {ran} run, {failed} failed")
    return results


def run_suite(url, suite, workdir):
    """Returns {test: PASS/SKIP/FAIL} for one suite (raises ValueError, see
    parse_output)."""
    d = os.path.join(workdir, suite)
    os.makedirs(d, exist_ok=True)
    # stderr apart: unbuffered, it would land inside the buffered stdout's lines.
    with open(os.path.join(d, "output.txt"), "w") as out, \
            open(os.path.join(d, "stderr.txt"), "w") as err:
        subprocess.run(["iscsi-test-cu", "-d", "--verbose", f"--test=SCSI.{suite}", url],
                       cwd=d, stdout=out, stderr=err, timeout=SUITE_TIMEOUT)
    with open(os.path.join(d, "output.txt"), errors="replace") as f:
        return parse_output(f.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="every SCSI.* suite")
    ap.add_argument("--suite", action="append", help="run only this suite (repeatable)")
    ap.add_argument("--json", help="write the per-test verdicts here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    suites = args.suite or (all_suites() if args.full else QUICK)
    if not suites:
        print("no suite to run (iscsi-test-cu -l listed no SCSI.* suite)")
        return 1

    install_module()
    work = tempfile.mkdtemp(prefix="rdconf", dir="/tmp")
    tgtd = Tgtd(os.path.join(work, "tgtd"), iothreads=4)
    report, unparsed = {}, []
    t0 = time.monotonic()
    try:
        raw = make_raw(os.path.join(work, "image.raw"), IMAGE_SIZE, seed=42, zero_chunks={5, 6})
        make_disk(raw, os.path.join(work, "disk"), os.path.join(work, "store"), cache="all")
        base = os.path.join(work, "rdwr.raw")
        shutil.copyfile(raw, base)
        tgtd.start()
        urls = {
            "rackdisk": tgtd.add_lun(1, os.path.join(work, "disk")),
            # The same thin-provisioning setting on both, so UNMAP and GET LBA STATUS
            # run on both.
            "rdwr": tgtd.add_lun(2, base, bstype="rdwr", params="thin_provisioning=1"),
        }
        for suite in suites:
            report[suite] = {}
            for store, url in urls.items():
                try:
                    report[suite][store] = run_suite(url, suite, os.path.join(work, store))
                except ValueError as e:
                    unparsed.append(f"{suite} on {store}: {e}")
                    report[suite][store] = {}
    finally:
        tgtd.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}")

    stores = ("rackdisk", "rdwr")
    regressions, empty = [], []
    print(f"{'':28} {'rackdisk':>10} {'':>7} {'rdwr':>10}")
    print(f"{'suite':28} {'pass/all':>10} {'skipped':>7} {'pass/all':>10} {'skipped':>7}")
    totals = {store: {PASS: 0, SKIP: 0, FAIL: 0} for store in stores}
    for suite in suites:
        cells = []
        for store in stores:
            res = report[suite][store]
            n = {v: sum(r == v for r in res.values()) for v in (PASS, SKIP, FAIL)}
            for v in n:
                totals[store][v] += n[v]
            cells += [f"{n[PASS]}/{len(res)}", str(n[SKIP])]
            if not res:
                empty.append(f"{suite} on {store}")
        print(f"{suite:28} {cells[0]:>10} {cells[1]:>7} {cells[2]:>10} {cells[3]:>7}")
        for test, verdict in sorted(report[suite]["rdwr"].items()):
            got = report[suite]["rackdisk"].get(test, "missing")
            if verdict == PASS and got != PASS:
                regressions.append(f"SCSI.{suite}.{test} ({got} on rackdisk)")
    cells = []
    for store in stores:
        t = totals[store]
        cells += [f"{t[PASS]}/{sum(t.values())}", str(t[SKIP])]
    print(f"{'total':28} {cells[0]:>10} {cells[1]:>7} {cells[2]:>10} {cells[3]:>7}"
          f"   ({time.monotonic() - t0:.0f} s)")
    for store in stores:
        t = totals[store]
        print(f"{store}: {t[PASS]} passed, {t[SKIP]} skipped, {t[FAIL]} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    counted = sum(sum(t.values()) for t in totals.values())
    if unparsed:
        print("output not understood: " + "; ".join(unparsed))
    if empty:
        print("suites that ran no test: " + ", ".join(empty))
    if counted == 0:
        print("no test was counted")
    if regressions:
        print("passed on rdwr, skipped, failed or missing on rackdisk:")
        for r in regressions:
            print("  " + r)
    return 1 if regressions or empty or unparsed or counted == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
