#!/usr/bin/env bash
# cross/build.sh TARGET — the release binary and the .deb for one target, built on an x86_64
# Debian 12 (bookworm) machine. Installs what it needs (as root, through apt), idempotently.
#
#   TARGET                            toolchain                              .deb arch
#   x86_64-unknown-linux-gnu          the cargo/rustc in PATH (rustup)       amd64
#   aarch64-unknown-linux-gnu         Debian's rustc-web 1.96 + its arm64    arm64
#                                     std (libstd-rust-web-dev:arm64)
#   armv7-unknown-linux-gnueabihf     Debian's rustc-web 1.96, std built     armhf
#                                     from rust-web-src (-Zbuild-std)
#
# Output: target/deb/tidegate_<version>_<arch>.deb, and the binary under
# $CARGO_TARGET_DIR/<TARGET>/dist/tidegate (target/cross for the cross targets, target/ for
# x86_64). The `dist` profile (Cargo.toml) is what ships; PROFILE=release builds a quicker one.
# The cross targets use cross/cargo-config.toml through `--config`, so the normal build is not
# touched. Facts behind the recipe: /work/shared/CROSS.md and docs/INSTALL.md.
set -euo pipefail

usage() {
    echo "usage: $0 x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf" >&2
    exit 2
}
[ $# -eq 1 ] || usage
target=$1
case "$target" in
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) arch=armhf ;;
    *) usage ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=${PROFILE:-dist}
out="$root/target/deb"
log() { echo "cross/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what it needs -------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_updated=
apt_install() {
    [ $# -gt 0 ] || return 0
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages ($*): run as root, or install them first"
    if [ -z "$apt_updated" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt_updated=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "$@"
}

debs=(dpkg-dev)   # dpkg-shlibdeps, for the $auto dependencies
case "$arch" in
    amd64) ;;
    arm64)
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then
            [ "$(id -u)" -eq 0 ] || die "arm64 is not a dpkg architecture here: run as root"
            log "dpkg --add-architecture arm64"
            dpkg --add-architecture arm64
            apt_updated=
        fi
        debs+=(rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
               libc6-dev-arm64-cross qemu-user-static)
        ;;
    armhf)
        # No armhf dpkg architecture: Debian's armhf std did not match rustc-web here (and an
        # armhf index that fails to download makes apt drop the whole bookworm-security update,
        # arm64 included). The std is built from source instead.
        debs+=(rustc-web cargo-web rust-web-src gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
               qemu-user-static)
        ;;
esac
missing=()
for p in "${debs[@]}"; do installed "$p" || missing+=("$p"); done
apt_install "${missing[@]}"

if ! command -v cargo-deb >/dev/null 2>&1; then
    log "installing cargo-deb (a build tool, not a dependency of tidegate)"
    cargo install cargo-deb --locked --version '^3.8'
fi

# The MSRV (rust-version in Cargo.toml) must be within the toolchain used.
msrv=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

if [ "$arch" = amd64 ]; then
    cargo=(cargo)
    rustc_v=$(rustc --version | awk '{print $2}')
    target_args=()
    target_dir=${CARGO_TARGET_DIR:-$root/target}
    bin="$target_dir/$profile/tidegate"
else
    # Debian's cargo and rustc (1.96), not rustup's: a rustc and a std of different versions
    # do not mix (E0514).
    cargo=(/usr/bin/cargo --config "$root/cross/cargo-config.toml")
    rustc_v=$(/usr/bin/rustc --version | awk '{print $2}')
    if [ "$arch" = arm64 ]; then
        std_v=$(dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64)
        rustc_deb_v=$(dpkg-query -W -f='${Version}' rustc-web)
        [ "$std_v" = "$rustc_deb_v" ] || die "libstd-rust-web-dev:arm64 $std_v does not match rustc-web $rustc_deb_v: apt-get install rustc-web libstd-rust-web-dev:arm64 (both from bookworm-security)"
    fi
    target_args=(--target "$target")
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cross}
    target_dir=$CARGO_TARGET_DIR
    bin="$target_dir/$target/$profile/tidegate"
fi
version_ge "$rustc_v" "$msrv" || die "rustc $rustc_v is older than the MSRV $msrv"
log "rustc $rustc_v (MSRV $msrv), target $target, profile $profile"

# --- build ---------------------------------------------------------------------------------
build_args=(build --locked --profile "$profile" "${target_args[@]}")
if [ "$arch" = armhf ]; then
    # Debian ships no armhf std for rustc-web 1.96 that works here: build it from rust-web-src.
    export RUSTC_BOOTSTRAP=1
    build_args+=('-Zbuild-std=std,panic_unwind')
fi
start=$(date +%s)
"${cargo[@]}" "${build_args[@]}"
build_s=$(( $(date +%s) - start ))
[ -x "$bin" ] || die "no binary at $bin"
# What dh_strip also drops: the toolchains' version strings (the profile strips the symbols).
case "$arch" in
    amd64) objcopy=objcopy ;;
    arm64) objcopy=aarch64-linux-gnu-objcopy ;;
    armhf) objcopy=arm-linux-gnueabihf-objcopy ;;
esac
"$objcopy" --remove-section=.comment "$bin"

# The .deb from the binary just built (--no-build: cargo-deb would build with other flags).
# --no-strip: the profile already strips (strip = "symbols"), with the right toolchain.
mkdir -p "$out"
deb_args=(--no-build --no-strip --profile "$profile" --output "$out")
[ "$arch" = amd64 ] || deb_args+=(--target "$target")
deb=$(CARGO_TARGET_DIR="$target_dir" cargo deb "${deb_args[@]}" | tail -n1)
[ -f "$deb" ] || die "cargo deb made no package"
# cargo-deb writes no DEBIAN/md5sums; add it so `dpkg --verify tidegate` and debsums can check
# the installed files. Repacked with the same owner (root) and compression.
repack=$(mktemp -d)
dpkg-deb -R "$deb" "$repack/pkg"
(cd "$repack/pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$repack/pkg/DEBIAN/md5sums"
# With no armhf dpkg architecture here, cargo-deb's dependency scan names the C library
# `libc6:armhf`; a package depends on its own architecture's libc6 without a qualifier.
sed -i -E '/^Depends:/ s/\blibc6:[a-z0-9]+/libc6/' "$repack/pkg/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz -b "$repack/pkg" "$deb" >/dev/null
rm -rf "$repack"
got_arch=$(dpkg-deb -f "$deb" Architecture)
[ "$got_arch" = "$arch" ] || die "$deb is for $got_arch, not $arch"

file "$bin" >&2 2>/dev/null || true
log "built in ${build_s}s; binary $(stat -c %s "$bin") bytes, package $(stat -c %s "$deb") bytes"
echo "$deb"
