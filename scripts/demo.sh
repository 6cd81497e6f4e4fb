#!/usr/bin/env bash
# demo.sh - what `make demo` runs (after `make deps` and the build): shows what rackdisk
# can do so far, end to end, on loopback, and cleans up after itself.
#
#   1. images:  build a sample ext4 disk image, publish it into a seed repository,
#               publish a second image sharing most of its content (deduplication),
#               serve the repository with nginx, and list, show and verify the images
#               over HTTP.
#   2. appliance: start redis-server (the cluster's chunk directory) and appliance A
#               (rackdiskd with its own tgtd) on free loopback ports, create a disk from
#               the sample image, read it whole and write to it through QEMU's iSCSI
#               driver, print the counters and a QEMU command line for a VM.
#   3. cluster: start appliance B in the same cluster (same Redis, same token), create a
#               disk of the same image on B and read it whole: every chunk comes from A's
#               peer server, none from the seed. Prints bytes by source (local, peer,
#               seed) for each appliance.
#
# Then it keeps running until Ctrl-C; with DEMO_EXIT=1, or when stdin is not a terminal,
# it exits after printing. Every server goes through start_bg and is stopped by cleanup
# (rackdiskd stops its tgtd itself), and the temporary directory is removed.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	# rackdiskd's tgtd needs root, and the tgt module is installed into tgt's directory
	echo "demo: run as root (sudo make demo)" >&2
	exit 1
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RACKDISK=${RACKDISK:-$ROOT/build/rackdisk}
RACKDISKD=${RACKDISKD:-$ROOT/build/rackdiskd}
WORK=$(mktemp -d /tmp/rackdisk-demo.XXXXXX)
PIDS=()
declare -A APIS=() # appliance name -> API URL
APP_ORDER=()

# --- helpers ---------------------------------------------------------------------------

section() { printf '\n=== %s\n' "$*"; }
say() { printf '  %s\n' "$*"; }
run() {
	printf '  $ %s\n' "$*"
	"$@" 2>&1 | sed 's/^/    /'
	return "${PIPESTATUS[0]}"
}

# stop_pid PID: SIGTERM, then SIGKILL after 20 s (bounded: a hung server cannot hold us).
stop_pid() {
	local pid=$1
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i
	# Ignored, not reset: a second Ctrl-C (or a TERM) while the servers stop would
	# otherwise end the script before restore_module and the rm below, leaving the
	# operator's bs_rackdisk.so replaced and $WORK behind. Each stop is bounded (stop_pid).
	trap - EXIT
	trap '' INT TERM
	[ -z "${SLEEP_PID:-}" ] || kill "$SLEEP_PID" 2>/dev/null || true
	# Newest first: the rackdiskds (each stops its tgtd) before Redis and the seed.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${PIDS[i]}"
	done
	restore_module
	rm -rf "$WORK"
	if [ "$rc" -eq 0 ]; then
		echo "demo: stopped, cleaned up"
	else
		echo "demo: FAILED (exit $rc)" >&2
	fi
	exit "$rc"
}
# Ctrl-C while the demo waits is the normal way out (exit 0); earlier it is a failure.
WAITING=0
on_signal() {
	[ "$WAITING" -eq 1 ] && exit 0
	exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # PORT [TRIES]: polls every 0.1 s, bounded
	local port=$1 tries=${2:-100}
	for _ in $(seq 1 "$tries"); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "demo: nothing listening on 127.0.0.1:$port" >&2
	return 1
}

# start_bg CMD...: runs a server in the background; cleanup() stops it.
start_bg() {
	"$@" &
	PIDS+=($!)
}

# start_nginx ROOT: serves ROOT on a free loopback port; sets NGINX_URL.
start_nginx() {
	local root=$1 dir=$WORK/nginx port
	port=$(free_port)
	mkdir -p "$dir"
	cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    sendfile on;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$port; root $root; autoindex on; }
}
EOF
	start_bg nginx -p "$dir" -c "$dir/nginx.conf"
	wait_port "$port"
	NGINX_URL=http://127.0.0.1:$port
}

# --- 1. images -------------------------------------------------------------------------

demo_images() {
	local repo=$WORK/repo
	chmod 755 "$WORK" # nginx workers run unprivileged

	section "images: build a sample disk image (ext4 with text, random, repeated, free space)"
	run bash "$ROOT/scripts/make-sample-image.sh" "$WORK/sample-v1.img" 32 1
	say "v2 = v1 with one file added (debugfs writes into the filesystem image):"
	cp "$WORK/sample-v1.img" "$WORK/sample-v2.img"
	run debugfs -w -R "write $ROOT/scripts/demo.sh demo.sh" "$WORK/sample-v2.img"

	section "images: publish into a seed repository ($repo)"
	run "$RACKDISK" image publish "$WORK/sample-v1.img" --repo "$repo" --name sample-v1
	say "a second image that shares most content stores only its new chunks:"
	run "$RACKDISK" image publish "$WORK/sample-v2.img" --repo "$repo" --name sample-v2
	say "publishing an unchanged image again writes nothing:"
	run "$RACKDISK" image publish "$WORK/sample-v1.img" --repo "$repo" --name sample-v1
	say "repository: $(find "$repo/chunks" -type f | wc -l) chunk objects," \
		"$(du -sh "$repo" | cut -f1) for $(du -sh --apparent-size "$WORK"/sample-v*.img |
			cut -f1 | paste -sd+) of images"

	section "images: serve the repository with nginx"
	start_nginx "$repo"
	say "seed repository at $NGINX_URL"

	section "images: list, show and verify over HTTP"
	run "$RACKDISK" image ls --repo "$NGINX_URL"
	run "$RACKDISK" image show --repo "$NGINX_URL" sample-v2
	run "$RACKDISK" image verify --repo "$NGINX_URL" sample-v1
	run "$RACKDISK" image verify --repo "$NGINX_URL" sample-v2

	section "images: a damaged chunk object is caught"
	local obj id hash
	id=$(cat "$repo/tags/sample-v1")
	hash=$(grep -o '"[0-9a-f]\{64\}"' "$repo/manifests/$id.json" | tr -d '"' | sed -n 3p)
	obj=$repo/chunks/${hash:0:2}/$hash
	cp "$obj" "$WORK/saved-object"
	/usr/bin/python3 -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,"rb").read()); b[len(b)//2]^=1; open(p,"wb").write(b)' "$obj"
	say "flipped one bit in ${obj#"$repo"/}"
	if run "$RACKDISK" image verify --repo "$NGINX_URL" sample-v1; then
		echo "demo: verify missed a damaged object" >&2
		return 1
	fi
	cp "$WORK/saved-object" "$obj"
	say "restored; verify is clean again:"
	run "$RACKDISK" image verify --repo "$NGINX_URL" sample-v1
}

# --- 2. appliance ----------------------------------------------------------------------

# install_module: tgtd loads backing stores from its module directory at start. A module
# that was there (make install's, another tree's) is kept in $WORK and put back by
# cleanup (restore_module), once the demo's tgtds are gone.
MODULE_DST=/usr/lib/tgt/backing-store/bs_rackdisk.so
install_module() {
	cmp -s "$ROOT/build/bs_rackdisk.so" "$MODULE_DST" && return 0
	mkdir -p "$(dirname "$MODULE_DST")"
	[ ! -f "$MODULE_DST" ] || cp -p "$MODULE_DST" "$WORK/previous-module.so"
	install -m 0755 "$ROOT/build/bs_rackdisk.so" "$MODULE_DST.tmp.$$"
	mv "$MODULE_DST.tmp.$$" "$MODULE_DST"
}

restore_module() {
	[ -f "$WORK/previous-module.so" ] || return 0
	cp -p "$WORK/previous-module.so" "$MODULE_DST.tmp.$$" &&
		mv "$MODULE_DST.tmp.$$" "$MODULE_DST" ||
		echo "demo: could not restore $MODULE_DST" >&2
}

# start_redis: redis-server on a free loopback port, no persistence; sets REDIS_URL.
start_redis() {
	local dir=$WORK/redis port
	port=$(free_port)
	mkdir -p "$dir"
	start_bg redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" \
		--appendonly no --daemonize no --loglevel warning --logfile "$dir/redis.log"
	wait_port "$port"
	REDIS_URL=redis://127.0.0.1:$port/0
}

# start_appliance NAME: rackdiskd + its tgtd on free ports, in the cluster (Redis at
# REDIS_URL, token file $WORK/cluster.token, peer server on a free loopback port); sets
# API, APP_DIR, DAEMON_PID and APIS[NAME].
start_appliance() {
	local name=$1 api_port portal_port control_port peer_port
	APP_DIR=$WORK/app-$name
	mkdir -p "$APP_DIR"
	api_port=$(free_port)
	portal_port=$(free_port)
	peer_port=$(free_port)
	# tgtadm -C takes a port below 32768; with a private IPC socket it only has to be
	# distinct from other tgtds' on this machine.
	control_port=$((1000 + RANDOM % 31000))
	cat >"$APP_DIR/rackdisk.conf" <<EOF
[node]
name = $name
rack = demo-rack
state_dir = $APP_DIR/state

[cache]
size = 1G

[seed]
url = $NGINX_URL

[iscsi]
portal = 127.0.0.1:$portal_port
tgtd = spawn
control_port = $control_port
io_timeout_ms = 10000

[api]
listen = 127.0.0.1:$api_port

[cluster]
redis = $REDIS_URL
listen = 127.0.0.1:$peer_port
token_file = $WORK/cluster.token
EOF
	start_bg "$RACKDISKD" --config "$APP_DIR/rackdisk.conf" 2>"$APP_DIR/rackdiskd.log"
	DAEMON_PID=${PIDS[-1]}
	API=http://127.0.0.1:$api_port
	APIS[$name]=$API
	APP_ORDER+=("$name")
	for _ in $(seq 1 200); do
		curl -sf "$API/api/v1/health" >/dev/null && return 0
		kill -0 "$DAEMON_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "demo: rackdiskd $name did not start; its log:" >&2
	cat "$APP_DIR/rackdiskd.log" >&2
	return 1
}

tgtd_pid_of() { # API
	curl -s "$1/api/v1/health" | grep -o '"tgtd_pid": *[0-9]*' | grep -o '[0-9]*$'
}

# metric API NAME{LABELS}: one value from /metrics (0 if absent).
metric() {
	curl -s "$1/metrics" | awk -v k="$2" '$1 == k { v = $2 } END { print (v == "" ? 0 : v) }'
}

# print_sources: chunk bytes obtained by source, one line per appliance.
print_sources() {
	local name s
	printf '  %-12s %12s %12s %12s\n' "bytes from:" local peer seed
	for name in "${APP_ORDER[@]}"; do
		printf '  %-12s' "$name"
		for s in local peer seed; do
			printf ' %12d' \
				"$(metric "${APIS[$name]}" "rackdisk_chunk_fetch_bytes_total{source=\"$s\"}")"
		done
		printf '\n'
	done
}

elapsed() { # START_NS: seconds since, 2 decimals
	local d=$(($(date +%s%N) - $1))
	printf '%d.%02d s' $((d / 1000000000)) $((d % 1000000000 / 10000000))
}

demo_appliance() {
	local out url t0 tgtd_pid img=$WORK/sample-v1.img size

	section "appliance: start redis-server (the cluster's chunk directory)"
	start_redis
	head -c 24 /dev/urandom | base64 >"$WORK/cluster.token"
	chmod 600 "$WORK/cluster.token"
	say "Redis at $REDIS_URL; the cluster token (shared by all appliances) in" \
		"$WORK/cluster.token"

	section "appliance: start rackdiskd A (own tgtd, tgt module bs_rackdisk.so)"
	install_module
	start_appliance demo-a
	tgtd_pid=$(tgtd_pid_of "$API")
	say "config $APP_DIR/rackdisk.conf:"
	sed 's/^/      /' "$APP_DIR/rackdisk.conf"
	say "processes: nginx ${PIDS[0]}, redis-server ${PIDS[1]}, rackdiskd $DAEMON_PID," \
		"tgtd $tgtd_pid"

	section "appliance: create a disk from sample-v1 (a thin clone: nothing is copied yet)"
	printf '  $ %s\n' "$RACKDISK --api $API disk create demo1 --image sample-v1 --size 64M"
	out=$("$RACKDISK" --api "$API" disk create demo1 --image sample-v1 --size 64M)
	printf '%s\n' "$out" | sed 's/^/    /'
	url=$(printf '%s\n' "$out" | tail -n1)
	[[ $url == iscsi://* ]] || { echo "demo: no iSCSI URL from disk create" >&2; return 1; }
	run "$RACKDISK" --api "$API" disk ls

	section "appliance: read the whole disk through QEMU's iSCSI driver"
	t0=$(date +%s%N)
	run qemu-img convert -f raw -O raw "$url" "$WORK/cold.raw"
	say "cold read (chunks come from the seed): $(elapsed "$t0")"
	t0=$(date +%s%N)
	run qemu-img convert -f raw -O raw "$url" "$WORK/warm.raw"
	say "warm read (chunks in the local cache): $(elapsed "$t0")"
	size=$(stat -c %s "$img")
	run cmp -n "$size" "$img" "$WORK/cold.raw"
	run cmp "$WORK/cold.raw" "$WORK/warm.raw"
	run cmp -n $((64 * 1048576 - size)) -i "$size:0" "$WORK/cold.raw" /dev/zero
	say "cold and warm reads equal the source image byte for byte; the rest of the"
	say "64 MiB disk, past the image, reads as zeros"
	rm -f "$WORK/cold.raw" "$WORK/warm.raw"

	section "appliance: write 1 MiB of 0xab at offset 0 (it goes to the disk's overlay only)"
	run qemu-io -f raw -c 'write -P 0xab 0 1M' "$url"
	run qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'read -P 0xab 1048064 512' "$url"

	section "appliance: counters"
	run "$RACKDISK" --api "$API" cache stats
	printf '  $ curl -s %s/metrics | grep ^rackdisk_chunk_\n' "$API"
	curl -s "$API/metrics" | grep '^rackdisk_chunk_' | grep -v '_bucket{' | sed 's/^/    /'
	say "(latency histogram buckets left out)"

	section "appliance: attach the disk to a VM"
	say "iSCSI URL: $url"
	say "QEMU:      qemu-system-x86_64 -enable-kvm -m 1G" \
		"-drive file=$url,format=raw,if=virtio,cache=none"
	say "(any initiator may log in: the disk was created without --initiator)"
}

# --- 3. cluster ------------------------------------------------------------------------

# wait_peer_alive API NAME: until the appliance at API sees NAME alive (bounded, 10 s).
wait_peer_alive() {
	local api=$1 name=$2
	for _ in $(seq 1 100); do
		curl -s "$api/api/v1/peers" | /usr/bin/python3 -c '
import json, sys
sys.exit(0 if any(p["name"] == sys.argv[1] and p["alive"] for p in json.load(sys.stdin))
         else 1)' "$name" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "demo: $name not seen alive through $api" >&2
	return 1
}

demo_cluster() {
	local out url t0 img=$WORK/sample-v1.img size api_a=$API tgtd_pid

	section "cluster: start appliance B (same Redis and token, its own cache, tgtd, portal)"
	start_appliance demo-b
	tgtd_pid=$(tgtd_pid_of "$API")
	say "processes: rackdiskd $DAEMON_PID, tgtd $tgtd_pid (appliance B)"
	wait_peer_alive "$API" demo-a
	run "$RACKDISK" --api "$API" peers

	section "cluster: B creates a disk of sample-v1 and reads it whole"
	printf '  $ %s\n' "$RACKDISK --api $API disk create demo2 --image sample-v1 --size 64M"
	out=$("$RACKDISK" --api "$API" disk create demo2 --image sample-v1 --size 64M)
	printf '%s\n' "$out" | sed 's/^/    /'
	url=$(printf '%s\n' "$out" | tail -n1)
	[[ $url == iscsi://* ]] || { echo "demo: no iSCSI URL from disk create on B" >&2; return 1; }
	t0=$(date +%s%N)
	run qemu-img convert -f raw -O raw "$url" "$WORK/b.raw"
	say "B's cold read (chunks come from A's peer server, not the seed): $(elapsed "$t0")"
	size=$(stat -c %s "$img")
	run cmp -n "$size" "$img" "$WORK/b.raw"
	say "B's read equals the source image byte for byte"
	rm -f "$WORK/b.raw"

	section "cluster: bytes by source (chunk bytes each appliance obtained)"
	print_sources
	say "A read the image from the seed; B took every chunk from A (peer) and none from"
	say "the seed. What B fetched from each peer:"
	run "$RACKDISK" --api "$API" peers
	printf '  $ curl -s %s/metrics | grep ^rackdisk_peer_server_\n' "$api_a"
	curl -s "$api_a/metrics" | grep '^rackdisk_peer_server_' | sed 's/^/    /'
}

main() {
	[ -x "$RACKDISK" ] || { echo "demo: $RACKDISK missing; run make build" >&2; exit 1; }
	[ -x "$RACKDISKD" ] || { echo "demo: $RACKDISKD missing; run make build" >&2; exit 1; }
	demo_images
	demo_appliance
	demo_cluster
	if [ "${DEMO_EXIT:-0}" = 1 ] || [ ! -t 0 ]; then
		section "demo: done (cleaning up $WORK)"
		return 0
	fi
	section "demo: running; press Ctrl-C to stop everything and clean up"
	WAITING=1
	while :; do
		sleep 3600 &
		SLEEP_PID=$!
		wait "$SLEEP_PID" || true
	done
}

main "$@"
