#!/usr/bin/env bash
# cross/all.sh — every package and every smoke test: build amd64, arm64 and armhf one after the
# other (at low CPU priority), run each binary (under qemu-user for the ARM ones), then install,
# run, remove and purge the amd64 package on this machine. Too slow for every CI run (the two
# cross builds take 10-20 minutes each on 2 cores); CI builds and smoke-tests amd64 only.
# Needs root (apt, dpkg -i). Prints the build time, binary and package size of each target.
set -euo pipefail
cd "$(dirname "$0")/.."
summary=()
for target in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    start=$(date +%s)
    deb=$(nice -n 19 cross/build.sh "$target")
    secs=$(( $(date +%s) - start ))
    cross/smoke.sh qemu "$deb"
    bin_size=$(dpkg-deb --fsys-tarfile "$deb" | tar -tvf - ./usr/bin/tidegate | awk '{print $3}')
    summary+=("$target: build ${secs}s, binary ${bin_size} bytes, package $(stat -c %s "$deb") bytes ($(basename "$deb"))")
    [ "$target" != x86_64-unknown-linux-gnu ] || amd64_deb=$deb
done
cross/smoke.sh deb "$amd64_deb"
printf '%s\n' "${summary[@]}"
