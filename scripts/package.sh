#!/usr/bin/env bash
# Builds the Debian package (cargo-deb) and lists its contents; fails if a file the
# package must ship is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release --workspace --bins
cargo build --release -p tutti-capi --lib
# libtutti's pkg-config file, for the paths the package installs to.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
sed -e 's|@PREFIX@|/usr|' -e 's|@LIBDIR@|${prefix}/lib|' -e "s|@VERSION@|$version|" \
    capi/tutti.pc.in >target/release/tutti.pc
rm -f target/debian/tutti_*.deb
cargo deb -p tutti-daemon --no-build
deb=$(ls target/debian/tutti_*.deb)
echo "built $deb"
listing=$(dpkg-deb -c "$deb")
echo "$listing"
for f in ./usr/bin/tuttid ./usr/bin/tutti ./usr/bin/tutti-bench ./lib/systemd/system/tuttid.service \
         ./usr/lib/sysusers.d/tutti.conf ./usr/lib/tmpfiles.d/tutti.conf ./etc/tutti/tuttid.toml \
         ./usr/lib/libtutti.so.0 ./usr/lib/libtutti.a ./usr/lib/pkgconfig/tutti.pc ./usr/include/tutti.h; do
    grep -q " $f\$" <<<"$listing" || { echo "package.sh: $f missing from $deb" >&2; exit 1; }
done
grep -q " ./usr/lib/libtutti.so -> libtutti.so.0\$" <<<"$listing" \
    || { echo "package.sh: the libtutti.so link is missing from $deb" >&2; exit 1; }
# The installed C API as a user builds with it: pkg-config finds the header and library,
# and the program needs the library by its soname.
unpacked=$(mktemp -d)
dpkg-deb -x "$deb" "$unpacked"
flags=$(PKG_CONFIG_PATH="$unpacked/usr/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$unpacked" \
    pkg-config --cflags --libs tutti)
cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Werror capi/examples/pubsub.c $flags -o "$unpacked/pubsub"
readelf -d "$unpacked/pubsub" | grep -q 'NEEDED.*\[libtutti\.so\.0\]' \
    || { echo "package.sh: a program built with pkg-config tutti does not need libtutti.so.0" >&2; exit 1; }
rm -rf "$unpacked"
echo "libtutti: pkg-config, header and library build the example"
dpkg-deb -f "$deb" Package Version Depends
# Depends: each package once, and what dpkg-shlibdeps says the binaries need together.
depends=$(dpkg-deb -f "$deb" Depends)
names=$(tr ',' '\n' <<<"$depends" | awk '{ print $1 }' | sort)
if [[ -n "$(uniq -d <<<"$names")" ]]; then
    echo "package.sh: Depends lists a package twice: $depends" >&2
    exit 1
fi
shlibs_dir=$(mktemp -d)
mkdir "$shlibs_dir/debian"
printf 'Source: tutti\n\nPackage: tutti\nArchitecture: any\n' >"$shlibs_dir/debian/control"
bins=("$PWD/target/release/tuttid" "$PWD/target/release/tutti" "$PWD/target/release/tutti-bench"
      "$PWD/target/release/libtutti.so")
shlibs=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "${bins[@]}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shlibs_dir"
if [[ "$shlibs" != "$depends" ]]; then
    echo "package.sh: Depends is '$depends' but dpkg-shlibdeps gives '$shlibs': update depends in daemon/Cargo.toml" >&2
    exit 1
fi
# (Listed into a variable first: `grep -q` stopping early would make pipefail see SIGPIPE.)
control=$(dpkg-deb --ctrl-tarfile "$deb" | tar -t)
grep -q conffiles <<<"$control" || { echo "package.sh: no conffiles" >&2; exit 1; }
echo "package ok"
