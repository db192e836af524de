#!/usr/bin/env bash
# shellcheck disable=SC2015  # `[ a ] && [ b ] || fail`: fail unless both hold, on purpose
# cross/smoke.sh — smoke tests of the built packages (cross/build.sh makes them).
#
#   cross/smoke.sh deb  target/deb/tidegate_<v>_amd64.deb
#       Installs the package on THIS machine (root), checks files, owners, modes, the user and
#       its groups, the conffile, the unit (statically: systemd is not PID 1 here), runs the
#       installed binary as the tidegate user with the installed config (a copy on free
#       loopback ports when 1883 or 8080 is taken), publishes and receives over MQTT,
#       reinstalls over an edited conffile, then `dpkg -r` and `dpkg -P` and checks what each
#       leaves. Refuses to touch a tidegate package it did not install itself.
#
#   cross/smoke.sh qemu target/deb/tidegate_<v>_<arm64|armhf|amd64>.deb
#       Unpacks the package (no install) and runs its binary, under qemu-user for arm64 and
#       armhf: --version, `check` of the packaged config and every example, and a short `run`
#       on loopback with a publish/subscribe round trip.
#
# Needs: mosquitto-clients, qemu-user-static (qemu mode), systemd (for systemd-analyze),
# util-linux (setpriv). Every wait is for an event, bounded by a timeout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke: ok: $*" >&2; }

[ $# -eq 2 ] || { echo "usage: $0 deb|qemu PACKAGE.deb" >&2; exit 2; }
mode=$1
deb=$(readlink -f "$2")
[ -f "$deb" ] || fail "no package at $2"
for tool in mosquitto_pub mosquitto_sub dpkg-deb; do
    command -v "$tool" >/dev/null || fail "$tool is missing (apt-get install mosquitto-clients dpkg)"
done
version=$(dpkg-deb -f "$deb" Version)
upstream=${version%-*}
arch=$(dpkg-deb -f "$deb" Architecture)

tmp=$(mktemp -d /tmp/tidegate-smoke.XXXXXX)
chmod 0755 "$tmp"
daemon=
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -KILL "$daemon" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_log FILE NEEDLE SECONDS: until FILE contains NEEDLE, or fail (with the log).
wait_log() {
    local file=$1 needle=$2 limit=$3 waited=0
    until grep -qF -- "$needle" "$file" 2>/dev/null; do
        if [ -n "$daemon" ] && ! kill -0 "$daemon" 2>/dev/null; then
            cat "$file" >&2
            fail "the daemon exited before logging '$needle'"
        fi
        [ "$waited" -lt $((limit * 10)) ] || { cat "$file" >&2; fail "no '$needle' in ${limit}s"; }
        sleep 0.1
        waited=$((waited + 1))
    done
}

# The port of the broker's first listener, from the daemon's log.
mqtt_port() {
    sed -n 's/.*MQTT broker listening on [^ ]*:\([0-9][0-9]*\) .*/\1/p' "$1" | head -n1
}

# roundtrip PORT: one live message through the broker, one reading of the simulated device.
roundtrip() {
    local port=$1 got="$tmp/got.$1" subpid i
    mosquitto_sub -h 127.0.0.1 -p "$port" -t smoke/roundtrip -C 1 -W 60 >"$got" &
    subpid=$!
    # The subscription may land after the first publish: publish until the subscriber has one.
    for i in $(seq 1 300); do
        kill -0 "$subpid" 2>/dev/null || break
        mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -t smoke/roundtrip -m "hello $i"
        sleep 0.2
    done
    wait "$subpid" || fail "mosquitto_sub got nothing on smoke/roundtrip (port $port)"
    grep -q '^hello [0-9]' "$got" || fail "unexpected message: $(cat "$got")"
    ok "publish/subscribe round trip through the broker on port $port: $(cat "$got")"
    mosquitto_sub -h 127.0.0.1 -p "$port" -t 'devices/demo/temperature' -C 1 -W 60 >"$got" \
        || fail "no reading from the simulated device"
    grep -q '"value":' "$got" || fail "not a reading: $(cat "$got")"
    ok "the simulated device publishes: $(cat "$got")"
}

# stop_daemon: SIGTERM, and the daemon must exit 0 (SPEC §1: within 10 s).
stop_daemon() {
    local rc=0 waited=0
    kill -TERM "$daemon"
    while kill -0 "$daemon" 2>/dev/null; do
        [ "$waited" -lt 300 ] || fail "still running 30 s after SIGTERM"
        sleep 0.1
        waited=$((waited + 1))
    done
    wait "$daemon" || rc=$?
    daemon=
    [ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
    ok "stopped cleanly on SIGTERM (exit 0)"
}

# loopback_config SRC DST DATA: SRC with both listeners on free loopback ports, data in DATA.
loopback_config() {
    sed -e 's#bind: 0\.0\.0\.0:1883#bind: 127.0.0.1:0#' \
        -e 's#bind: 0\.0\.0\.0:8080#bind: 127.0.0.1:0#' \
        -e "s#data_dir: /var/lib/tidegate#data_dir: $3#" "$1" >"$2"
    grep -q 'bind: 127.0.0.1:0' "$2" && ! grep -q '0\.0\.0\.0' "$2" && grep -qF "data_dir: $3" "$2" \
        || fail "the packaged config changed shape: cannot move it to loopback ports"
}

port_taken() { [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }

check_examples() { # RUNNER... BIN DIR
    local dir=${*: -1} bin=${*: -2:1} f n=0
    local runner=("${@:1:$#-2}")
    for f in "$dir"/*.yaml; do
        "${runner[@]}" "$bin" check -c "$f" >"$tmp/check.out" 2>&1 \
            || { cat "$tmp/check.out" >&2; fail "tidegate check $f"; }
        n=$((n + 1))
    done
    [ "$n" -gt 0 ] || fail "no examples in $dir"
    ok "tidegate check passes on the $n examples in $dir"
}

# ---------------------------------------------------------------------------------------------
smoke_qemu() {
    local runner=() machine bin="$tmp/root/usr/bin/tidegate" cfg="$tmp/loopback.yaml"
    case "$arch" in
        arm64) runner=(qemu-aarch64-static); machine=AArch64 ;;
        armhf) runner=(qemu-arm-static -L /usr/arm-linux-gnueabihf); machine=ARM ;;
        amd64) runner=(); machine=X86-64 ;;
        *) fail "no runner for $arch" ;;
    esac
    [ ${#runner[@]} -eq 0 ] || command -v "${runner[0]}" >/dev/null \
        || fail "${runner[0]} is missing (apt-get install qemu-user-static)"
    dpkg-deb -x "$deb" "$tmp/root"
    ok "unpacked $(basename "$deb") ($arch)"
    readelf -h "$bin" | grep -q "Machine: *.*$machine" || fail "$bin is not an $machine binary"
    ok "binary: $(readelf -h "$bin" | sed -n 's/ *Machine: *//p'), $(stat -c %s "$bin") bytes"
    local v
    v=$("${runner[@]}" "$bin" --version)
    [ "$v" = "tidegate $upstream" ] || fail "--version said '$v', expected 'tidegate $upstream'"
    ok "--version: $v"
    "${runner[@]}" "$bin" check -c "$tmp/root/etc/tidegate/tidegate.yaml" \
        || fail "check of the packaged config"
    ok "tidegate check passes on the packaged /etc/tidegate/tidegate.yaml"
    check_examples "${runner[@]}" "$bin" "$tmp/root/usr/share/doc/tidegate/examples"

    mkdir -p "$tmp/data"
    loopback_config "$tmp/root/etc/tidegate/tidegate.yaml" "$cfg" "$tmp/data"
    "${runner[@]}" "$bin" run -c "$cfg" >"$tmp/run.log" 2>&1 </dev/null &
    daemon=$!
    wait_log "$tmp/run.log" "tidegate is running" 120
    local port
    port=$(mqtt_port "$tmp/run.log")
    [ -n "$port" ] || fail "no listener port in the log"
    roundtrip "$port"
    stop_daemon
    [ -f "$tmp/data/initial-admin-password" ] || fail "no initial-admin-password in data_dir"
    ok "$arch: the unpacked binary runs${runner:+ under ${runner[0]}}"
}

# ---------------------------------------------------------------------------------------------
as_tidegate() { setpriv --reuid=tidegate --regid=tidegate --init-groups -- "$@"; }

mode_of() { stat -c '%U:%G %a' "$1"; }
expect_mode() { # PATH "owner:group mode"
    local got
    got=$(mode_of "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
    ok "$1 $got"
}

smoke_deb() {
    [ "$(id -u)" -eq 0 ] || fail "the deb smoke test installs a package: run it as root"
    [ "$arch" = "$(dpkg --print-architecture)" ] || fail "$arch package on a $(dpkg --print-architecture) machine"
    command -v setpriv >/dev/null || fail "setpriv is missing (util-linux)"
    command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing (apt-get install systemd)"
    local marker=/var/lib/tidegate/.tidegate-smoke
    if dpkg-query -W -f='${Status}' tidegate 2>/dev/null | grep -q 'installed'; then
        [ -e "$marker" ] || fail "a tidegate package is installed that this script did not install; remove it first"
        log "purging the package a previous smoke run left"
        dpkg -P tidegate >/dev/null
    fi
    [ ! -e /etc/tidegate ] && [ ! -e /var/lib/tidegate ] \
        || fail "/etc/tidegate or /var/lib/tidegate exists without the package; remove it first"

    # --- install ---
    dpkg -i "$deb" </dev/null >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i"; }
    touch "$marker"
    ok "dpkg -i $(basename "$deb")"
    cat "$tmp/dpkg.log" >&2
    if [ -d /run/systemd/system ]; then
        log "systemd is running here: postinst started the service"
    else
        log "systemd is not PID 1 here: the unit is checked statically and the daemon run by hand"
    fi

    # Files, owners, modes.
    local unit
    unit=$(dpkg -L tidegate | grep '/systemd/system/tidegate\.service$')
    for f in /usr/bin/tidegate "$unit" /usr/lib/udev/rules.d/60-tidegate-gpio.rules \
        /usr/share/doc/tidegate/copyright /usr/share/doc/tidegate/changelog.Debian.gz \
        /usr/share/doc/tidegate/INSTALL.md /usr/share/doc/tidegate/examples/full.yaml \
        /usr/share/doc/tidegate/examples/tls/ca.crt; do
        [ -f "$f" ] || fail "$f is missing"
    done
    ok "binary, unit ($unit), udev rule, docs and examples are installed"
    expect_mode /usr/bin/tidegate "root:root 755"
    expect_mode /etc/tidegate "root:tidegate 770"
    expect_mode /etc/tidegate/tidegate.yaml "root:tidegate 640"
    expect_mode /var/lib/tidegate "tidegate:tidegate 750"
    dpkg-query -W -f='${Conffiles}\n' tidegate | grep -q '^ /etc/tidegate/tidegate.yaml ' \
        || fail "/etc/tidegate/tidegate.yaml is not a conffile"
    ok "/etc/tidegate/tidegate.yaml is a conffile"
    cmp -s /etc/tidegate/tidegate.yaml "$root/config/tidegate.yaml" \
        || fail "the installed config is not config/tidegate.yaml"

    # The user and its groups.
    local pw
    pw=$(getent passwd tidegate) || fail "no tidegate user"
    IFS=: read -r _ _ uid _ _ home shell <<<"$pw"
    [ "$uid" -lt 1000 ] || fail "tidegate is not a system user (uid $uid)"
    [ "$home" = /var/lib/tidegate ] && [ "$shell" = /usr/sbin/nologin ] \
        || fail "tidegate: home $home, shell $shell"
    local groups
    groups=$(id -nG tidegate)
    for g in tidegate dialout gpio; do
        [[ " $groups " == *" $g "* ]] || fail "tidegate is not in $g ($groups)"
    done
    ok "system user tidegate (uid $uid, home $home, $shell) in groups: $groups"

    # Enabled for boot (deb-systemd-helper works without systemd running).
    [ -L /etc/systemd/system/multi-user.target.wants/tidegate.service ] \
        || fail "the unit is not enabled (no multi-user.target.wants link)"
    ok "enabled: /etc/systemd/system/multi-user.target.wants/tidegate.service"

    # The unit, statically: any output is a failure (verify only warns on unknown keys).
    systemd-analyze verify "$unit" >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify"; }
    [ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify complained"; }
    ok "systemd-analyze verify $unit: clean"
    systemd-analyze security --offline=true "$unit" >"$tmp/security.log" 2>&1 || true
    local exposure
    exposure=$(sed -n 's/.*Overall exposure level for tidegate.service: *\([0-9.]*\) *\(.*\)/\1 \2/p' "$tmp/security.log")
    [ -n "$exposure" ] || { cat "$tmp/security.log" >&2; fail "no exposure level from systemd-analyze security"; }
    # The unit is as tight as the daemon allows; a change that loosens it shows up here.
    systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1 \
        || fail "exposure level $exposure is above 2.0"
    ok "systemd-analyze security --offline=true: exposure $exposure"

    # What the service runs: `check` (ExecStartPre) and `run`, as the tidegate user.
    as_tidegate /usr/bin/tidegate check -c /etc/tidegate/tidegate.yaml || fail "tidegate check (installed config)"
    ok "tidegate check -c /etc/tidegate/tidegate.yaml as tidegate"
    check_examples as_tidegate /usr/bin/tidegate /usr/share/doc/tidegate/examples
    local cfg=/etc/tidegate/tidegate.yaml
    if port_taken 1883 || port_taken 8080; then
        log "port 1883 or 8080 is taken on this machine: running a copy of the installed config on free loopback ports"
        cfg="$tmp/loopback.yaml"
        loopback_config /etc/tidegate/tidegate.yaml "$cfg" /var/lib/tidegate
        chmod 0644 "$cfg"
    fi
    env -i PATH=/usr/bin:/bin setpriv --reuid=tidegate --regid=tidegate --init-groups -- \
        /usr/bin/tidegate run -c "$cfg" >>"$tmp/run.log" 2>&1 </dev/null &
    daemon=$!
    wait_log "$tmp/run.log" "tidegate is running" 60
    ok "tidegate run -c $cfg as tidegate: running"
    local port
    port=$(mqtt_port "$tmp/run.log")
    [ -n "$port" ] || fail "no listener port in the log"
    roundtrip "$port"
    stop_daemon
    expect_mode /var/lib/tidegate/initial-admin-password "tidegate:tidegate 600"
    [ -s /var/lib/tidegate/broker.db ] || fail "no broker.db in /var/lib/tidegate"
    ok "state written by the tidegate user: $(find /var/lib/tidegate -mindepth 1 -printf '%f ')"
    # The web UI saves the config by renaming a file over it: the service may write there.
    as_tidegate sh -c 'echo x >/etc/tidegate/.tidegate.yaml.tidegate-tmp' \
        || fail "the tidegate user cannot write /etc/tidegate"
    ok "the tidegate user may write /etc/tidegate (web UI saves)"

    # --- reinstall (the upgrade path) over an edited conffile ---
    echo "# edited by cross/smoke.sh" >>/etc/tidegate/tidegate.yaml
    dpkg -i "$deb" </dev/null >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -i (reinstall)"; }
    tail -n1 /etc/tidegate/tidegate.yaml | grep -q 'edited by cross/smoke.sh' \
        || fail "reinstalling lost the edit to the conffile"
    expect_mode /etc/tidegate/tidegate.yaml "root:tidegate 640"
    ok "reinstall keeps the edited conffile"

    # --- remove: binary gone; config, state and user stay ---
    dpkg -r tidegate </dev/null >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -r"; }
    [ ! -e /usr/bin/tidegate ] && [ ! -e "$unit" ] || fail "dpkg -r left the binary or the unit"
    [ -f /etc/tidegate/tidegate.yaml ] || fail "dpkg -r removed the conffile"
    [ -s /var/lib/tidegate/broker.db ] || fail "dpkg -r removed the state"
    dpkg-query -W -f='${db:Status-Abbrev}' tidegate | grep -q '^rc' || fail "not in state rc after dpkg -r"
    ok "dpkg -r: binary and unit gone; /etc/tidegate and /var/lib/tidegate kept"

    # --- purge: config and state gone; the system user stays (Debian practice) ---
    dpkg -P tidegate </dev/null >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg -P"; }
    cat "$tmp/dpkg.log" >&2
    for p in /etc/tidegate /var/lib/tidegate /etc/systemd/system/multi-user.target.wants/tidegate.service \
        /var/lib/systemd/deb-systemd-helper-enabled/tidegate.service.dsh-also \
        /usr/lib/udev/rules.d/60-tidegate-gpio.rules /usr/share/doc/tidegate; do
        [ ! -e "$p" ] && [ ! -L "$p" ] || fail "dpkg -P left $p"
    done
    ! dpkg-query -W -f='${Status}' tidegate 2>/dev/null | grep -q 'installed\|config-files' \
        || fail "dpkg still knows tidegate after purge"
    getent passwd tidegate >/dev/null && log "the tidegate system user and group stay after purge (Debian practice; see docs/INSTALL.md)"
    ok "dpkg -P: no files, no config, no state, no enablement left"
}

case "$mode" in
    deb) smoke_deb ;;
    qemu) smoke_qemu ;;
    *) echo "usage: $0 deb|qemu PACKAGE.deb" >&2; exit 2 ;;
esac
echo "smoke: PASS ($mode, $(basename "$deb"))"
