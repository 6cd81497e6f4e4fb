#!/usr/bin/env bash
# mkbootimage.sh OUT.raw - a small bootable Linux disk image for boot traces (issue 6).
#
# Everything comes from Debian packages fetched with `apt-get download` (cached in
# $BOOT_DEBS, default build/boot/debs) and unpacked with dpkg-deb; nothing is mounted and
# nothing runs as the guest, so it needs no loop devices. The disk (96 MiB, MBR):
#
#   sector 0     syslinux mbr.bin
#   p1  1 MiB    FAT16, bootable: syslinux (ldlinux.sys), syslinux.cfg, vmlinuz, initrd.gz
#   p2  32 MiB   ext4 root, read-only: busybox-static, /sbin/init (images/boot/init),
#                a payload of kernel modules the init reads like a boot reads its system
#
# so the whole boot - BIOS loading syslinux, syslinux loading the kernel and initramfs,
# the kernel mounting the root and running init - reads from the disk. The initramfs
# (images/boot/initramfs-init) loads virtio_blk and ext4 (modules in Debian's kernel) and
# switches to the root. The guest prints RACKDISK-BOOT-DONE on ttyS0 and powers off.
#
# Deterministic where cheap: fixed UUIDs, volume id, disk id, hash seed, and every
# timestamp at SOURCE_DATE_EPOCH (default below); the package versions are whatever the
# archive holds (printed, and stored in the root as /etc/rackdisk-boot.conf).
set -euo pipefail

OUT=${1:?usage: mkbootimage.sh OUT.raw}
HERE=$(cd "$(dirname "$0")" && pwd)
BOOTSRC=$HERE/boot
ROOTDIR=$(cd "$HERE/.." && pwd)
DEBS=${BOOT_DEBS:-$ROOTDIR/build/boot/debs}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}   # 2026-01-01 00:00:00 UTC
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
ROOT_UUID=5a1e0b00-7261-636b-6469-736b00000002
HASH_SEED=5a1e0b00-7261-636b-6469-736b000000ff
DISK_ID=0x7261636b
FAT_ID=7261636b

DISK_MB=96
P1_START=2048          # sectors
P1_SECTORS=63488       # 31 MiB
P2_START=$((P1_START + P1_SECTORS))
P2_SECTORS=$((DISK_MB * 2048 - P2_START))

for tool in apt-get dpkg-deb mkfs.fat mcopy mmd syslinux sfdisk mke2fs debugfs cpio gzip; do
	command -v "$tool" >/dev/null || { echo "mkbootimage: $tool missing (make deps)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mkbootimage.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. Packages: the kernel that linux-image-amd64 points at, and a static busybox.
mkdir -p "$DEBS"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "mkbootimage: cannot resolve linux-image-amd64" >&2; exit 1; }
fetch() {
	local pkg=$1 ver deb
	ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
	deb=$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -1 || true)
	if [ -z "$deb" ] || [ "$(dpkg-deb -f "$deb" Version)" != "$ver" ]; then
		rm -f "$DEBS/${pkg}_"*.deb
		# apt drops privileges to _apt for downloads; let it write the cache.
		chmod 0777 "$DEBS" 2>/dev/null || true
		(cd "$DEBS" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
			{ echo "mkbootimage: apt-get download $pkg failed" >&2; exit 1; }
		deb=$(ls "$DEBS/${pkg}_"*.deb | head -1)
	fi
	echo "$deb"
}
KDEB=$(fetch "$KPKG")
BDEB=$(fetch busybox-static)
echo "mkbootimage: $(basename "$KDEB") $(basename "$BDEB")"
dpkg-deb -x "$KDEB" "$WORK/k"
dpkg-deb -x "$BDEB" "$WORK/bb"
KVER=${KPKG#linux-image-}
BUSYBOX=$WORK/bb/bin/busybox
"$BUSYBOX" depmod -b "$WORK/k" "$KVER"
MODDIR=$WORK/k/lib/modules/$KVER

# Every module a wanted one needs, dependencies first (modules.dep lists each closure).
declare -A seen=()
order=()
resolve() {
	local path=$1 dep
	[ -n "${seen[$path]:-}" ] && return
	seen[$path]=1
	for dep in $(awk -v m="$path:" '$1 == m {$1 = ""; print}' "$MODDIR/modules.dep"); do
		resolve "$dep"
	done
	order+=("$path")
}
for m in crypto/crc32c_generic drivers/virtio/virtio_pci drivers/block/virtio_blk fs/ext4/ext4; do
	resolve "kernel/$m.ko"
done

stamp_tree() {
	find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

applets() {
	local dir=$1 a
	mkdir -p "$dir/bin" "$dir/sbin"
	cp "$BUSYBOX" "$dir/bin/busybox"
	for a in $("$BUSYBOX" --list); do
		[ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"
	done
}

# 2. initramfs: busybox, the modules, initramfs-init.
IR=$WORK/initramfs
applets "$IR"
mkdir -p "$IR/proc" "$IR/sys" "$IR/dev" "$IR/newroot" "$IR/lib/modules"
for m in "${order[@]}"; do
	mkdir -p "$IR/lib/modules/$(dirname "$m")"
	cp "$MODDIR/$m" "$IR/lib/modules/$m"
	echo "$m"
done > "$IR/modules.list"
install -m 0755 "$BOOTSRC/initramfs-init" "$IR/init"
stamp_tree "$IR"
(cd "$IR" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible -R 0:0) |
	gzip -n -9 > "$WORK/initrd.gz"

# 3. Root filesystem: busybox, init, a few "services" and a payload to read.
RD=$WORK/root
applets "$RD"
mkdir -p "$RD"/{proc,sys,dev,tmp,run,etc/init.d,usr/lib/payload}
install -m 0755 "$BOOTSRC/init" "$RD/sbin/init"
for s in network syslog cron; do
	install -m 0755 "$BOOTSRC/svc-example" "$RD/etc/init.d/$s"
done
echo rackdisk-boot > "$RD/etc/hostname"
printf 'PRETTY_NAME="rackdisk boot trace image"\nID=rackdisk-boot\n' > "$RD/etc/os-release"
printf '/dev/vda2 / ext4 ro 0 1\n' > "$RD/etc/fstab"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$RD/etc/passwd"
printf 'root:x:0:\n' > "$RD/etc/group"
printf 'kernel=%s\nbusybox=%s\nsource_date_epoch=%s\n' "$(basename "$KDEB")" \
	"$(basename "$BDEB")" "$SOURCE_DATE_EPOCH" > "$RD/etc/rackdisk-boot.conf"
for d in lib crypto fs/nls; do
	mkdir -p "$RD/usr/lib/payload/$d"
	cp -r "$MODDIR/kernel/$d/." "$RD/usr/lib/payload/$d/"
done
stamp_tree "$RD"

# 4. The disk: MBR and partition table, FAT boot partition with syslinux, ext4 root.
IMG=$WORK/disk.raw
truncate -s "${DISK_MB}M" "$IMG"
sfdisk -q "$IMG" <<EOF
label: dos
label-id: $DISK_ID
start=$P1_START, size=$P1_SECTORS, type=6, bootable
start=$P2_START, size=$P2_SECTORS, type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$IMG" bs=440 count=1 conv=notrunc status=none
# (mkfs.fat warns that the file is larger than the partition: that is the point.)
out=$(mkfs.fat -F 16 -n RDBOOT -i "$FAT_ID" --invariant -h "$P1_START" --offset="$P1_START" \
	"$IMG" $((P1_SECTORS / 2)) 2>&1) || { echo "$out" >&2; exit 1; }
FAT="$IMG@@$((P1_START * 512))"
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$BOOTSRC/syslinux.cfg" "$WORK/syslinux.cfg"
touch -d "@$SOURCE_DATE_EPOCH" "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg"
export MTOOLS_SKIP_CHECK=1
mmd -i "$FAT" ::/syslinux
mcopy -m -i "$FAT" "$WORK/vmlinuz" "$WORK/initrd.gz" ::/
mcopy -m -i "$FAT" "$WORK/syslinux.cfg" ::/syslinux/
syslinux --install --offset $((P1_START * 512)) --directory /syslinux "$IMG"
ROOTFS=$WORK/root.ext4
mke2fs -q -F -t ext4 -L root -U "$ROOT_UUID" -E "hash_seed=$HASH_SEED" -d "$RD" "$ROOTFS" \
	$((P2_SECTORS / 2))k
# mke2fs -d copies each file's ctime, which touch cannot set: pin them with debugfs (its
# namei does not follow a final symlink, so links get theirs too).
(cd "$RD" && find . -printf '/%P\n') | sed "s|\$| ctime @$SOURCE_DATE_EPOCH|; s|^|sif |" \
	> "$WORK/ctimes"
debugfs -w -f "$WORK/ctimes" "$ROOTFS" >/dev/null 2>&1
dd if="$ROOTFS" of="$IMG" bs=512 seek="$P2_START" conv=notrunc,sparse status=none

mkdir -p "$(dirname "$OUT")"
mv "$IMG" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "mkbootimage: $OUT ($DISK_MB MiB, kernel $KVER, $(wc -l < "$IR/modules.list") modules" \
	"in the initramfs, $(find "$RD/usr/lib/payload" -type f | wc -l) payload files)"
