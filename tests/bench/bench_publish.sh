#!/usr/bin/env bash
# bench_publish.sh [SIZE_MIB]: times `rackdisk image publish` of a realistic image
# (bench_publish_gen.py, default 1024 MiB) into an empty repository, against the baseline
# measured in the same run on the same file: `sha256sum FILE` followed by
# `zstd -1 -T0 -c FILE > /dev/null`. Before every timed run the file is read once
# (cat > /dev/null), so each tool starts from the same warm page cache. Each side runs
# RUNS times (default 2); the best time of each is compared. Target: ratio <= 1.0.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RACKDISK=${RACKDISK:-$ROOT/build/rackdisk}
SIZE_MIB=${1:-1024}
RUNS=${RUNS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rackdisk-bench-publish.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

img=$WORK/image.raw
echo "bench-publish: generating a ${SIZE_MIB} MiB image (random, text-like, zero, repeated)"
/usr/bin/python3 "$ROOT/tests/bench/bench_publish_gen.py" "$img" "$SIZE_MIB"
# Flush the freshly written image now, so that publish's syncfs does not pay for it.
sync

warm() { cat "$img" >/dev/null; }
now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
calc() { awk "BEGIN { print $* }"; }

pub_times=() base_times=()
for run in $(seq 1 "$RUNS"); do
	rm -rf "$WORK/repo"
	warm
	t0=$(now)
	"$RACKDISK" image publish "$img" --repo "$WORK/repo" --name bench >"$WORK/publish.out"
	t1=$(now)
	pub_times+=("$(calc "$t1 - $t0")")

	warm
	t0=$(now)
	sha256sum "$img" >/dev/null
	zstd -q -1 -T0 -c "$img" >/dev/null
	t1=$(now)
	base_times+=("$(calc "$t1 - $t0")")
	printf 'bench-publish: run %d: rackdisk %.2f s, sha256sum+zstd %.2f s\n' "$run" \
		"${pub_times[-1]}" "${base_times[-1]}"
done

pub=$(best "${pub_times[@]}")
base=$(best "${base_times[@]}")
sed 's/^/  /' "$WORK/publish.out"
stored=$(du -sm "$WORK/repo" | cut -f1)
printf 'bench-publish: image %d MiB, %d cores, repository %d MiB\n' "$SIZE_MIB" "$(nproc)" "$stored"
printf 'bench-publish: rackdisk image publish      %6.2f s  (%4.0f MiB/s)\n' "$pub" \
	"$(calc "$SIZE_MIB / $pub")"
printf 'bench-publish: sha256sum + zstd -1 -T0     %6.2f s  (%4.0f MiB/s)  [baseline]\n' "$base" \
	"$(calc "$SIZE_MIB / $base")"
printf 'bench-publish: ratio rackdisk/baseline     %6.2fx (target <= 1.00x)\n' \
	"$(calc "$pub / $base")"
