#!/usr/bin/env bash
# Runs each cmocka unit-test binary given on the command line and prints one closing
# line "unit: N passed, N failed". Exits non-zero when any binary fails; a binary that
# is missing or not executable counts as a failure (it tested nothing).
set -u
pass=0; fail=0; failed=()
for t in "$@"; do
	if [ ! -x "$t" ]; then
		echo "run-unit: $t is missing or not executable" >&2
		fail=$((fail + 1)); failed+=("$t (missing)")
		continue
	fi
	if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$t"); fi
done
[ ${#failed[@]} -eq 0 ] || printf 'failed: %s\n' "${failed[@]}"
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
