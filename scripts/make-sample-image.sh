#!/usr/bin/env bash
# make-sample-image.sh OUT [SIZE_MB] [SEED] - builds a small, realistic raw disk image:
# an ext4 filesystem (mkfs.ext4 -d) holding text from /usr/share/doc, a pseudo-random
# file (incompressible), a file made of one block repeated (deduplicates), and free
# space that stays zero. SEED (default 1) makes the random part reproducible; two images
# with different seeds share their text and repeated parts but not their random part.
set -euo pipefail

out=${1:?usage: make-sample-image.sh OUT [SIZE_MB] [SEED]}
size_mb=${2:-16}
seed=${3:-1}
if ! [[ $size_mb =~ ^[0-9]+$ ]] || [ "$size_mb" -lt 4 ]; then
	echo "make-sample-image.sh: SIZE_MB must be a whole number >= 4" >&2
	exit 2
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# About a third of the image is text, an eighth random, an eighth repeated; the rest
# (filesystem metadata aside) is free space, i.e. zero chunks.
text_kb=$((size_mb * 1024 / 3))
rand_kb=$((size_mb * 1024 / 8))
rep_kb=$((size_mb * 1024 / 8))

mkdir -p "$stage/doc"
used=0
dirs=()
while IFS=$'\t' read -r kb d; do
	[ "$used" -lt "$text_kb" ] || break
	[ $((used + kb)) -le "$text_kb" ] || continue
	dirs+=("$d")
	used=$((used + kb))
done < <(du -sk /usr/share/doc/*/ 2>/dev/null)
[ ${#dirs[@]} -eq 0 ] || cp -r "${dirs[@]}" "$stage/doc/" 2>/dev/null || true

# Deterministic pseudo-random bytes from the seed; the repeated file is one random 64 KiB
# block over and over.
/usr/bin/python3 - "$stage" "$seed" "$rand_kb" "$rep_kb" <<'PY'
import random, sys
stage, seed, rand_kb, rep_kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(f"{stage}/random.bin", "wb") as f:
    f.write(random.Random(seed).randbytes(rand_kb * 1024))
block = random.Random(-1).randbytes(65536)
with open(f"{stage}/repeated.bin", "wb") as f:
    f.write(block * (rep_kb // 64))
PY

rm -f "$out"
truncate -s "${size_mb}M" "$out"
# Fixed UUID and hash seed so the same SEED gives similar metadata, which keeps the
# filesystem reproducible enough for dedup demonstrations.
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -d "$stage" -L rackdisk-sample -U 6f1c1a7e-0000-4000-8000-00000000000$((seed % 10)) \
	-E root_owner=0:0,hash_seed=6f1c1a7e-0000-4000-8000-000000000000 "$out" >/dev/null
echo "$out: ${size_mb} MiB ext4 sample image (text ${used} KiB, random ${rand_kb} KiB, repeated ${rep_kb} KiB)"
