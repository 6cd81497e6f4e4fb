#!/usr/bin/env bash
# make deps: install every Debian package the build, the tests and the demo need, and
# unpack the source of the installed tgt version into build/deps/tgt for the tgt module.
# Idempotent and quick when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-block-extra: QEMU's iscsi:// driver (qemu-utils only recommends it); libclang-rt-14-dev:
# libFuzzer for `make fuzz` and the fuzz smoke run of `make test`; systemd: systemd-analyze
# checks the unit; python3-pytest-timeout: the per-test time limit of the integration
# tests (tests/integration/pytest.ini). Installed with --no-install-recommends, so every
# one is named here.
PKGS=(
	build-essential pkg-config clang dpkg-dev
	libssl-dev libzstd-dev zstd libcurl4-openssl-dev curl libjansson-dev libhiredis-dev
	libaio-dev libmicrohttpd-dev libinih-dev libcmocka-dev
	tgt redis-server nginx-light qemu-utils qemu-block-extra libiscsi-bin libiscsi-dev
	libclang-rt-14-dev systemd
	python3 python3-pytest python3-pytest-timeout iproute2 util-linux e2fsprogs gnuplot-nox
	qemu-system-x86 busybox-static syslinux syslinux-common mtools dosfstools fdisk cpio
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SRC_LIST=/etc/apt/sources.list.d/rackdisk-deb-src.sources
need_src=0
tgt_ver=$(dpkg-query -W -f='${Version}' tgt 2>/dev/null || true)
stamp=build/deps/tgt.version
if [ -z "$tgt_ver" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$tgt_ver" ]; then
	need_src=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_src -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" != 0 ]; then
	echo "deps: missing packages (${missing[*]:-tgt source}); run 'make deps' as root" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() { [ $updated = 1 ] || { apt-get update -qq; updated=1; }; }

if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	apt_update
	# Debian starts services on install; rackdisk runs its own instances, so keep the
	# packaged ones from starting (policy-rc.d is honoured by invoke-rc.d). A policy-rc.d
	# left behind would keep every package's services from starting, for good: ours is
	# removed on any exit (a failed install under set -e, Ctrl-C, kill), and one the
	# machine already had is left exactly as it was. set -C creates ours only if absent.
	policy=/usr/sbin/policy-rc.d policy_ours=0
	trap '[ "$policy_ours" = 0 ] || rm -f "$policy"' EXIT
	# Without these a SIGTERM or SIGHUP would end bash without running the EXIT trap.
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if (set -C; printf '#!/bin/sh\nexit 101\n' > "$policy") 2>/dev/null; then
		policy_ours=1
		chmod +x "$policy"
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	[ "$policy_ours" = 0 ] || rm -f "$policy"
	policy_ours=0
	trap - EXIT HUP INT TERM
	tgt_ver=$(dpkg-query -W -f='${Version}' tgt)
fi

if [ $need_src = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$tgt_ver" ]; then
	# The tgt module is compiled against the headers of the exact installed tgt version
	# (its private data sits after struct scsi_lu), so fetch that version's source package.
	if ! grep -rqsE '^Types:.*deb-src' /etc/apt/sources.list.d/ &&
		! grep -rqs '^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		echo "deps: adding a deb-src entry"
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then
			sed -e 's/^Types: deb$/Types: deb-src/' \
				/etc/apt/sources.list.d/debian.sources > "$SRC_LIST"
		else
			# a classic sources.list: the same lines as deb-src
			grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
				sed -e 's/^deb /deb-src /' > "${SRC_LIST%.sources}.list"
		fi
		updated=0
	fi
	apt_update
	rm -rf build/deps/tgt build/deps/tgt-src
	mkdir -p build/deps/tgt-src
	echo "deps: fetching the source of tgt $tgt_ver"
	(cd build/deps/tgt-src && apt-get source -qq "tgt=$tgt_ver" >/dev/null 2>&1)
	d=$(find build/deps/tgt-src -mindepth 1 -maxdepth 1 -type d -name 'tgt-*' | head -n1)
	[ -n "$d" ] && [ -f "$d/usr/tgtd.h" ] || { echo "deps: tgt source not found" >&2; exit 1; }
	mv "$d" build/deps/tgt
	rm -rf build/deps/tgt-src
	echo "$tgt_ver" > "$stamp"
fi
