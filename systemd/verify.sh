#!/usr/bin/env bash
# Checks the shipped systemd files without installing them:
#   - tuttid.service with `systemd-analyze verify` (any warning fails, not only errors),
#   - its hardening with `systemd-analyze security --offline` (exposure must stay low),
#   - tutti.sysusers and tutti.tmpfiles applied to a scratch root.
#
# usage: systemd/verify.sh [TUTTID]
#   TUTTID  the tuttid binary, or the directory that holds it (e.g. target/release).
#           `verify` only checks that ExecStart names an executable, so without it a
#           stand-in (/bin/true) is used. The shipped unit keeps /usr/bin/tuttid: the
#           checks run on a temporary copy whose ExecStart points at TUTTID.
#
# Needs the systemd package (systemd-analyze, systemd-sysusers, systemd-tmpfiles); no
# running systemd. Exits 0 when everything passes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Highest acceptable `systemd-analyze security` exposure, times ten (19 = "1.9 OK" now).
max_exposure=30

binary="${1:-/bin/true}"
if [[ -d "$binary" ]]; then
    binary="$binary/tuttid"
fi
if [[ ! -x "$binary" ]]; then
    echo "verify.sh: $binary is not an executable (pass the tuttid binary or its directory)" >&2
    exit 2
fi
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    if ! command -v "$tool" >/dev/null; then
        echo "verify.sh: $tool not found; install the systemd package (apt-get install systemd)" >&2
        exit 2
    fi
done

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=0

# 1. The unit. The copy must keep the name tuttid.service.
mkdir "$scratch/units"
unit="$scratch/units/tuttid.service"
sed "s#^ExecStart=/usr/bin/tuttid #ExecStart=$binary #" "$here/tuttid.service" >"$unit"
if ! grep -q "^ExecStart=$binary " "$unit"; then
    echo "FAIL tuttid.service: no 'ExecStart=/usr/bin/tuttid ' line to point at $binary" >&2
    failed=1
fi
# verify exits 0 on unknown keys and unparsable values; treat any output as a failure.
if output="$(systemd-analyze verify --man=no "$unit" 2>&1)" && [[ -z "$output" ]]; then
    echo "ok   systemd-analyze verify tuttid.service"
else
    echo "FAIL systemd-analyze verify tuttid.service:" >&2
    echo "$output" >&2
    failed=1
fi
if output="$(systemd-analyze security --offline=true --threshold="$max_exposure" "$unit" 2>&1)"; then
    echo "ok   systemd-analyze security: $(grep -o 'Overall exposure level.*' <<<"$output")"
else
    echo "FAIL systemd-analyze security: exposure above $((max_exposure / 10)).$((max_exposure % 10)):" >&2
    echo "$output" >&2
    failed=1
fi

# 2. sysusers: creates group and user tutti in a scratch root.
root="$scratch/root"
mkdir -p "$root/etc"
touch "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
if systemd-sysusers --root="$root" "$here/tutti.sysusers" >/dev/null 2>&1 &&
    grep -q '^tutti:' "$root/etc/group" &&
    grep -q '^tutti:x:[0-9]*:[0-9]*:tutti messaging daemon:' "$root/etc/passwd"; then
    echo "ok   tutti.sysusers creates user and group tutti"
else
    echo "FAIL tutti.sysusers:" >&2
    systemd-sysusers --root="$root" "$here/tutti.sysusers" >&2 || true
    failed=1
fi

# 3. tmpfiles: /run/tutti, mode 0750, owned by tutti:tutti (chown needs root).
if [[ "$(id -u)" -eq 0 ]]; then
    uid="$(awk -F: '$1 == "tutti" { print $3 }' "$root/etc/passwd")"
    if systemd-tmpfiles --root="$root" --create "$here/tutti.tmpfiles" &&
        [[ "$(stat -c '%a %u' "$root/run/tutti" 2>/dev/null)" == "750 $uid" ]]; then
        echo "ok   tutti.tmpfiles creates /run/tutti 0750 tutti:tutti"
    else
        echo "FAIL tutti.tmpfiles: /run/tutti is $(stat -c '%a %U:%G' "$root/run/tutti" 2>&1)" >&2
        failed=1
    fi
else
    echo "skip tutti.tmpfiles (run as root to check ownership)"
fi

if [[ "$failed" -ne 0 ]]; then
    echo "verify.sh: FAILED" >&2
    exit 1
fi
echo "verify.sh: all systemd files pass"
