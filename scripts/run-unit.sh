#!/usr/bin/env bash
# Runs each cmocka unit-test binary given on the command line and prints one closing
# line "unit: N passed, N failed". Exits non-zero when any binary fails.
set -u
pass=0; fail=0; failed=()
for t in "$@"; do
	[ -x "$t" ] || continue
	if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$t"); fi
done
[ ${#failed[@]} -eq 0 ] || printf 'failed: %s\n' "${failed[@]}"
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
