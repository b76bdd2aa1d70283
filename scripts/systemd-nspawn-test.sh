#!/usr/bin/env bash
# Installs tutti's Debian package into a minimal Debian bookworm booted with a real systemd
# as PID 1 (systemd-nspawn --boot) and checks what an administrator meets: readiness, the
# watchdog, reload, stop, who may attach, upgrade, remove and purge.
#
# usage: scripts/systemd-nspawn-test.sh [--no-build]
#   --no-build  use the newest target/debian/tutti_*.deb instead of building it
#
# Needs root (debootstrap, systemd-nspawn, nsenter) and installs debootstrap and
# systemd-container with apt-get when they are missing. The root file system is made once
# with `debootstrap --variant=minbase` (packages from Debian's archive; set
# TUTTI_NSPAWN_MIRROR to use another mirror) and kept in $TUTTI_NSPAWN_CACHE
# (default /var/cache/tutti-nspawn); each run boots a fresh copy of it. Commands run
# inside through nsenter into the container's PID 1 (no machinectl: the host need not run
# systemd). Every step has a hard timeout and the container and its copy are always
# removed (trap). Prints PASS/FAIL per check and a closing "N passed, N failed" line;
# exits 0 only when every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
[[ "${1:-}" == "--no-build" ]] && build=0

cache="${TUTTI_NSPAWN_CACHE:-/var/cache/tutti-nspawn}"
cached_root="$cache/bookworm"
# Written last into a finished root: a debootstrap that was cut short is never reused.
ready_mark=".tutti-nspawn-root"
# Seconds: the watchdog is WatchdogSec=10s, so a restart takes 10-13 s.
watchdog_wait=40

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
note() { echo "---- $*"; }

if [[ "$(id -u)" -ne 0 ]]; then
    echo "systemd-nspawn-test.sh: needs root (debootstrap, systemd-nspawn, nsenter)" >&2
    exit 2
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [[ ${#missing[@]} -gt 0 ]]; then
    note "installing ${missing[*]}"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work="$(mktemp -d /var/tmp/tutti-nspawn.XXXXXX)"
nspawn_pid=""
leader=""
teardown() {
    local rc=$?
    if [[ -n "$nspawn_pid" ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # The first SIGTERM asks the container to power off, a second one ends it at once.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        sleep 0.5
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# 1. The package.
if [[ "$build" -eq 1 ]]; then
    note "building the package (scripts/package.sh)"
    if ! timeout 1800 bash scripts/package.sh >"$work/package.log" 2>&1; then
        tail -30 "$work/package.log" >&2
        echo "systemd-nspawn-test.sh: the package did not build" >&2
        exit 1
    fi
fi
deb="$(ls -t target/debian/tutti_*.deb 2>/dev/null | head -1)"
[[ -n "$deb" ]] || { echo "systemd-nspawn-test.sh: no target/debian/tutti_*.deb" >&2; exit 1; }
note "package $deb"

# 2. The root file system, made once.
if [[ ! -f "$cached_root/$ready_mark" ]]; then
    note "debootstrap bookworm into $cached_root (once; several minutes)"
    mkdir -p "$cache"
    rm -rf --one-file-system "$cached_root.tmp" "$cached_root"
    # shellcheck disable=SC2086 # the mirror is optional: debootstrap's default otherwise
    if ! timeout 1200 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
        bookworm "$cached_root.tmp" ${TUTTI_NSPAWN_MIRROR:-} >"$work/debootstrap.log" 2>&1; then
        tail -30 "$work/debootstrap.log" >&2
        echo "systemd-nspawn-test.sh: debootstrap failed" >&2
        exit 1
    fi
    touch "$cached_root.tmp/$ready_mark"
    mv "$cached_root.tmp" "$cached_root"
fi
root="$work/root"
cp -a --reflink=auto "$cached_root" "$root"
cp "$deb" "$root/root/tutti.deb"
cp "$deb" "$root/root/tutti-upgrade.deb"

# 3. Boot.
note "booting the container"
timeout 900 systemd-nspawn --boot --register=no --keep-unit --private-network --console=pipe \
    --machine=tutti-nspawn-test -D "$root" >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
# PID 1 of the container: the descendant of systemd-nspawn (under `timeout`) whose pid in
# its own namespace is 1.
descendants() {
    local p
    for p in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$p"
        descendants "$p"
    done
}
for _ in $(seq 100); do
    for p in $(descendants "$nspawn_pid"); do
        if grep -qE '^NSpid:.*[[:space:]]1$' "/proc/$p/status" 2>/dev/null; then
            leader="$p"
            break
        fi
    done
    [[ -n "$leader" ]] && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$leader" ]]; then
    cat "$work/console.log" >&2
    echo "systemd-nspawn-test.sh: the container did not start" >&2
    exit 1
fi

# Runs a command inside the container, with a hard timeout (first argument, seconds).
in_ct() {
    local t="$1"
    shift
    timeout "$t" nsenter --target "$leader" --all --root --wd \
        /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
# Runs a bash script inside the container.
sh_ct() { in_ct "${2:-30}" /bin/bash -c "$1"; }
prop() { in_ct 10 systemctl show -p "$1" --value tuttid.service; }
# Waits up to $2 seconds for the bash condition $1 to hold inside the container.
wait_ct() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        sh_ct "$1" 10 >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}
tuttid_pids() { sh_ct 'for f in /proc/[0-9]*/comm; do [ "$(cat "$f" 2>/dev/null)" = tuttid ] && echo "${f//[^0-9]/}"; done; true'; }

# `is-system-running --wait` says "offline" until the container's systemd has its bus up.
state=offline
deadline=$((SECONDS + 90))
while [[ "$state" == "offline" || -z "$state" ]] && ((SECONDS < deadline)); do
    state="$(in_ct 90 systemctl is-system-running --wait 2>/dev/null || true)"
    [[ "$state" == "offline" || -z "$state" ]] && sleep 0.2
done
if [[ "$state" == "running" || "$state" == "degraded" ]]; then
    pass "boot: systemd in the container is $state"
else
    fail "boot: systemd in the container is '$state'"
    cat "$work/console.log"
fi

# 4. Install.
if out="$(in_ct 120 dpkg -i /root/tutti.deb 2>&1)" && sh_ct 'getent passwd tutti && getent group tutti' >/dev/null; then
    pass "install: dpkg -i creates user and group tutti"
else
    fail "install: $out"
fi
if [[ "$(in_ct 10 systemctl is-enabled tuttid.service 2>&1 || true)" == "disabled" &&
    "$(in_ct 10 systemctl is-active tuttid.service 2>&1 || true)" == "inactive" ]]; then
    pass "install: tuttid is installed disabled and not started (the operator reviews the config first)"
else
    fail "install: tuttid after install is $(in_ct 10 systemctl is-enabled tuttid.service 2>&1 || true)/$(in_ct 10 systemctl is-active tuttid.service 2>&1 || true)"
fi

# 5. Readiness: `systemctl start` returns once tuttid sent READY=1 (its STATUS= line is
# then the unit's status text) and by then the control socket answers, with no retry.
if in_ct 60 systemctl start tuttid.service &&
    [[ "$(prop ActiveState)" == "active" ]] &&
    [[ "$(prop StatusText)" == serving* ]] &&
    in_ct 10 tutti --socket /run/tutti/tuttid.sock status >/dev/null; then
    pass "readiness: start returned with tuttid active, status '$(prop StatusText)', socket answering"
else
    fail "readiness: $(prop ActiveState) '$(prop StatusText)'"
fi
sh_ct 'cp /etc/tutti/tuttid.toml /root/tuttid.toml.orig'
sh_ct 'printf "cores = [1, 1]\n" > /etc/tutti/tuttid.toml'
if ! in_ct 60 systemctl restart tuttid.service 2>/dev/null && [[ "$(prop ActiveState)" != "active" ]]; then
    pass "readiness: a config tuttid refuses fails the start ($(prop Result))"
else
    fail "readiness: start with a bad config: $(prop ActiveState)"
fi
sh_ct 'cp /root/tuttid.toml.orig /etc/tutti/tuttid.toml'
in_ct 10 systemctl reset-failed tuttid.service || true
in_ct 60 systemctl start tuttid.service || true

# 6. Memlock: below the recommended limit, tuttid's warning states its own limit and what
# follows, not the limit of some other checking process.
memlock="$(sh_ct 'journalctl -b -u tuttid --no-pager -o cat | grep "rlimit.memlock" | tail -1' || true)"
if [[ -z "$memlock" ]] && sh_ct 'journalctl -b -u tuttid --no-pager -o cat | grep -q "tuning check"'; then
    pass "memlock: tuttid's limit is as recommended (no warning)"
elif grep -q "This is tuttid's own locked-memory limit" <<<"$memlock" && ! grep -q "checking process" <<<"$memlock"; then
    pass "memlock: tuttid warns of its own limit ($(grep -o 'found=[^ ]*' <<<"$memlock"))"
else
    fail "memlock: ${memlock:-no tuning check in the journal}"
fi

# 7. Watchdog: a stopped (SIGSTOP) tuttid misses its pings; systemd kills and restarts it.
old_pid="$(prop MainPID)"
old_restarts="$(prop NRestarts)"
sh_ct "kill -STOP $old_pid" || true
note "tuttid $old_pid stopped with SIGSTOP; waiting for the watchdog (WatchdogSec=10s)"
if wait_ct "[ \"\$(systemctl show -p NRestarts --value tuttid)\" -gt $old_restarts ] && systemctl is-active -q tuttid && [ \"\$(systemctl show -p MainPID --value tuttid)\" != $old_pid ]" "$watchdog_wait" &&
    sh_ct 'journalctl -b -u tuttid --no-pager | grep -q "Watchdog timeout"'; then
    pass "watchdog: $old_pid killed after 'Watchdog timeout', restarted as $(prop MainPID) (NRestarts=$(prop NRestarts))"
else
    fail "watchdog: MainPID $(prop MainPID), NRestarts $(prop NRestarts), $(prop ActiveState)"
fi

# 8. Reload: a good file applies the log level; a broken one keeps the running settings.
pid="$(prop MainPID)"
sh_ct 'printf "log = \"debug\"\n" > /etc/tutti/tuttid.toml'
if in_ct 30 systemctl reload tuttid.service &&
    wait_ct 'journalctl -b -u tuttid --no-pager -o cat | grep -q "SIGHUP: log filter reloaded"' 15; then
    pass "reload: systemctl reload exits 0 and a changed log level applies without a restart"
else
    fail "reload: $(in_ct 10 systemctl status tuttid --no-pager 2>&1 | tail -5)"
fi
sh_ct 'printf "log = = broken\n" > /etc/tutti/tuttid.toml'
if in_ct 30 systemctl reload tuttid.service &&
    wait_ct 'journalctl -b -u tuttid --no-pager -o cat | grep -q "keeping the running settings"' 15 &&
    [[ "$(prop ActiveState)" == "active" && "$(prop MainPID)" == "$pid" ]] &&
    in_ct 10 tutti --socket /run/tutti/tuttid.sock status >/dev/null; then
    pass "reload: a broken file is logged, the running settings kept, same pid $pid"
else
    fail "reload with a broken file: $(prop ActiveState) pid $(prop MainPID) (was $pid)"
fi
sh_ct 'cp /root/tuttid.toml.orig /etc/tutti/tuttid.toml'

# 9. Attach: a member of group tutti may attach, anyone else is refused by the directory.
sh_ct 'useradd -M -G tutti alice && useradd -M bob'
if sh_ct 'setpriv --reuid=alice --regid=alice --init-groups tutti status' >/dev/null 2>&1; then
    pass "attach: alice (in group tutti) can attach, with no TUTTI_SOCKET (fallback /run/tutti/tuttid.sock)"
else
    fail "attach: alice: $(sh_ct 'setpriv --reuid=alice --regid=alice --init-groups tutti status' 2>&1 | tail -1)"
fi
bob="$(sh_ct 'setpriv --reuid=bob --regid=bob --init-groups tutti status' 2>&1 || true)"
if grep -q "/run/tutti/tuttid.sock: Permission denied" <<<"$bob" && grep -q "usermod -aG tutti" <<<"$bob"; then
    pass "attach: bob (not in group tutti) gets: $(tail -1 <<<"$bob")"
else
    fail "attach: bob: $bob"
fi

# 10. Stop: exit 0 (no restart), /run/tutti gone.
if in_ct 60 systemctl stop tuttid.service &&
    [[ "$(prop ExecMainStatus)" == "0" && "$(prop Result)" == "success" ]] &&
    sh_ct '[ ! -e /run/tutti ]'; then
    pass "stop: tuttid exited 0, Result=success, /run/tutti removed"
else
    fail "stop: status $(prop ExecMainStatus) result $(prop Result); $(sh_ct 'ls -la /run/tutti' 2>&1)"
fi

# 11. Upgrade: installing the package again over itself restarts a running tuttid.
in_ct 10 systemctl enable tuttid.service 2>/dev/null
in_ct 60 systemctl start tuttid.service || true
pid="$(prop MainPID)"
if in_ct 120 dpkg -i /root/tutti-upgrade.deb >/dev/null 2>&1 &&
    [[ "$(prop ActiveState)" == "active" && "$(prop MainPID)" != "$pid" && "$(prop MainPID)" != "0" ]] &&
    [[ "$(in_ct 10 systemctl is-enabled tuttid.service 2>&1)" == "enabled" ]]; then
    pass "upgrade: tuttid restarted ($pid -> $(prop MainPID)) and still enabled"
else
    fail "upgrade: $(prop ActiveState) pid $(prop MainPID) (was $pid), $(in_ct 10 systemctl is-enabled tuttid.service 2>&1 || true)"
fi

# 12. Remove: the service is stopped, no tuttid left running from a deleted binary.
in_ct 120 dpkg -r tutti >"$work/remove.log" 2>&1 || cat "$work/remove.log"
left="$(tuttid_pids)"
if [[ -z "$left" ]] && sh_ct '[ ! -e /usr/bin/tuttid ] && ! systemctl is-active -q tuttid'; then
    pass "remove: tuttid stopped, no tuttid process left, unit $(in_ct 10 systemctl is-enabled tuttid.service 2>&1 || true)"
else
    fail "remove: tuttid processes left: ${left:-none}; $(in_ct 10 systemctl status tuttid --no-pager 2>&1 | head -3)"
fi

# 13. Purge: no link left to tuttid.service, none dangling, no state.
in_ct 120 dpkg -P tutti >"$work/purge.log" 2>&1 || cat "$work/purge.log"
links="$(sh_ct 'find /etc/systemd /run/systemd/system /var/lib/systemd -name "tuttid*" 2>/dev/null; find /etc/systemd -xtype l 2>/dev/null; true')"
if [[ -z "$links" ]] && sh_ct '[ ! -e /var/lib/tutti ] && [ ! -e /etc/tutti/tuttid.toml ]'; then
    pass "purge: no tuttid link or dangling link under /etc/systemd, no /var/lib/tutti, no config"
else
    fail "purge: left behind: $links $(sh_ct 'ls -d /var/lib/tutti /etc/tutti/tuttid.toml' 2>/dev/null || true)"
fi

echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
