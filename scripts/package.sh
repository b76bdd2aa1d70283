#!/usr/bin/env bash
# Builds the Debian package (cargo-deb) and lists its contents; fails if a file the
# package must ship is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release --workspace --bins
rm -f target/debian/tutti_*.deb
cargo deb -p tutti-daemon --no-build
deb=$(ls target/debian/tutti_*.deb)
echo "built $deb"
listing=$(dpkg-deb -c "$deb")
echo "$listing"
for f in ./usr/bin/tuttid ./usr/bin/tutti ./usr/bin/tutti-bench ./lib/systemd/system/tuttid.service \
         ./usr/lib/sysusers.d/tutti.conf ./usr/lib/tmpfiles.d/tutti.conf ./etc/tutti/tuttid.toml; do
    grep -q " $f\$" <<<"$listing" || { echo "package.sh: $f missing from $deb" >&2; exit 1; }
done
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
bins=("$PWD/target/release/tuttid" "$PWD/target/release/tutti" "$PWD/target/release/tutti-bench")
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
