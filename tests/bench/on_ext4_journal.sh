#!/bin/bash
# on_ext4_journal.sh CMD [ARGS...]: runs CMD with RD_FIXTURE_DIR on a fresh ext4 with a
# journal (data=ordered, ext4's default), loop-mounted from a sparse file in /var/tmp,
# and removes it afterwards, also when CMD fails. Needs root (mount, a loop device).
set -euo pipefail
dir=$(mktemp -d /var/tmp/rd-ext4j-XXXXXX)
cleanup() {
	umount "$dir/mnt" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
truncate -s 2G "$dir/fs.img"
mkfs.ext4 -q -F "$dir/fs.img"
mkdir "$dir/mnt"
mount -o loop "$dir/fs.img" "$dir/mnt"
RD_FIXTURE_DIR="$dir/mnt" "$@"
