#!/usr/bin/env bash
# Builds tutti's libcpg.so.4 (capi/cpg/libcpg.c on libtutti, linked static) against Debian's
# <corosync/cpg.h>, installing libcpg-dev and libcorosync-common-dev with apt-get when they
# are missing (the repository holds no copy of those headers).
#
#   capi/cpg/build.sh [--release] [--out DIR]      (default DIR: target/cpg)
#
# Prints the library's path. Every exported symbol is cpg_*@@COROSYNC_CPG_1.0 (checked).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
profile=debug cargo_flags=() out=""
while [ $# -gt 0 ]; do
    case $1 in
    --release) profile=release; cargo_flags=(--release); shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
out=${out:-$repo/target/cpg}
if [ ! -f /usr/include/corosync/cpg.h ] || [ ! -f /usr/include/corosync/corotypes.h ]; then
    [ "$(id -u)" -eq 0 ] || { echo "build.sh: libcpg-dev is missing and installing it needs root" >&2; exit 2; }
    apt-get install -y --no-install-recommends libcpg-dev libcorosync-common-dev >&2
fi
(cd "$repo" && cargo build -q -p tutti-capi "${cargo_flags[@]}")
mkdir -p "$out"
gcc -O2 -g -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
    -I "$repo/capi/include" -o "$out/libcpg.so.4" "$here/libcpg.c" \
    -Wl,-soname,libcpg.so.4 -Wl,--version-script="$here/libcpg.map" -Wl,--no-undefined \
    "$repo/target/$profile/libtutti.a" -lpthread -ldl -lm -lrt -lgcc_s -lc
# The ABI: the 20 functions of cpg.h, each with Corosync's version node, and nothing else.
want=$(grep -oE '^cs_error_t (cpg_[a-z_]+)' /usr/include/corosync/cpg.h | awk '{print $2 "@@COROSYNC_CPG_1.0"}' | sort -u)
have=$(nm -D --defined-only "$out/libcpg.so.4" | awk '$2 ~ /^[TW]$/ {print $3}' | sort -u)
if [ "$want" != "$have" ]; then
    echo "build.sh: exported symbols differ from cpg.h's 20 functions:" >&2
    diff <(echo "$want") <(echo "$have") >&2 || true
    exit 1
fi
echo "$out/libcpg.so.4"
