#!/usr/bin/env bash
# check-module.sh SO: a tgt module is loaded with dlopen(RTLD_NOW), and a symbol missing
# there makes tgtd log one line and carry on without the backing store. So check at build
# time that every undefined symbol of SO is either exported by /usr/sbin/tgtd or defined
# by a shared library SO depends on, and that SO exports register_bs_module.
set -euo pipefail
so=$1
tgtd=${TGTD:-/usr/sbin/tgtd}
if ! nm -D --defined-only "$so" | awk '{print $3}' | grep -qx register_bs_module; then
	echo "$so: register_bs_module is not exported" >&2
	exit 1
fi
provided=$(mktemp)
trap 'rm -f "$provided"' EXIT
{
	nm -D --defined-only "$tgtd" 2>/dev/null | awk '{print $3}'
	for lib in $(ldd "$so" | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}'); do
		nm -D --defined-only "$lib" | awk '{print $3}'
	done
} | sed 's/@.*//' | sort -u > "$provided"
missing=$(nm -D --undefined-only "$so" | awk '$1 == "U" || $1 == "w" {print $1" "$2}' |
	awk '$1 == "U" {print $2}' | sed 's/@.*//' | sort -u | comm -23 - "$provided")
if [ -n "$missing" ]; then
	echo "$so: undefined symbols that neither tgtd nor a library provides:" >&2
	echo "$missing" | sed 's/^/  /' >&2
	exit 1
fi
