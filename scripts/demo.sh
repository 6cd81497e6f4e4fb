#!/usr/bin/env bash
# demo.sh - what `make demo` runs (after `make deps` and the build): shows what rackdisk
# can do so far, end to end, on loopback, and cleans up after itself.
#
#   1. images:  build a sample ext4 disk image, publish it into a seed repository,
#               publish a second image sharing most of its content (deduplication),
#               serve the repository with nginx, and list, show and verify the images
#               over HTTP.
#
# Later stages add their sections (appliance, disks, cluster) as functions below and call
# them from main(); every server they start goes through start_bg/cleanup.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RACKDISK=${RACKDISK:-$ROOT/build/rackdisk}
WORK=$(mktemp -d /tmp/rackdisk-demo.XXXXXX)
PIDS=()

# --- helpers ---------------------------------------------------------------------------

section() { printf '\n=== %s\n' "$*"; }
say() { printf '  %s\n' "$*"; }
run() {
	printf '  $ %s\n' "$*"
	"$@" 2>&1 | sed 's/^/    /'
	return "${PIPESTATUS[0]}"
}

cleanup() {
	local rc=$?
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK"
	[ "$rc" -eq 0 ] || echo "demo: FAILED (exit $rc)" >&2
	exit "$rc"
}
trap cleanup EXIT INT TERM

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

main() {
	[ -x "$RACKDISK" ] || { echo "demo: $RACKDISK missing; run make build" >&2; exit 1; }
	demo_images
	section "demo: done (cleaning up $WORK)"
}

main "$@"
