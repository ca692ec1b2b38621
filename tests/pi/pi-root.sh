#!/usr/bin/env bash
# A Debian 12 (bookworm) arm64 root: the base of Raspberry Pi OS, run on this x86 machine through
# qemu-user-static. Used by tests/pi/check.py (`make pi-check`); docs/deploy.md, "Raspberry Pi
# install, proven under emulation".
#
#   pi-root.sh base CACHE      build the base root once (debootstrap) and print its folder; reused
#                              while PACKAGES, SUITE and this script's build steps stay the same
#   pi-root.sh mode            print how arm64 programs run here: "chroot" (binfmt_misc) or "proot"
#   pi-root.sh run ROOT CMD..  run CMD inside ROOT as root, in a mount namespace of its own (the
#                              /proc and /dev/shm mounted for it vanish with it, whatever happens)
#
# How arm64 programs run: with binfmt_misc (the kernel hands every arm64 program to
# qemu-aarch64-static, registered with the F flag so the chroot needs no copy of qemu), a plain
# chroot works and is fast. Where binfmt_misc cannot be mounted or written (a container without
# privileges), proot runs each program through qemu itself (-q): slower, as proot traces every
# system call. PI_MODE=proot forces that path.
set -euo pipefail

SUITE=bookworm
ARCH=arm64
MIRROR=${PI_MIRROR:-http://deb.debian.org/debian}
# Raspberry Pi OS Lite (Bookworm) has these besides Debian's minimal base; the install steps use them.
PACKAGES=adduser,sudo,ca-certificates,python3
# Raspberry Pi OS also has the groups that own /dev/spidev* and /dev/gpiochip* (INSTALL.md step 5).
PI_GROUPS="spi gpio"
BINFMT=/proc/sys/fs/binfmt_misc
QEMU=/usr/bin/qemu-aarch64-static
SHELL_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "pi-root: $*" >&2; exit 1; }

need_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x "$QEMU" ] || missing+=(qemu-user-static)
  command -v proot >/dev/null || missing+=(proot)
  [ ${#missing[@]} -eq 0 ] && return
  echo "pi-root: installing ${missing[*]}" >&2
  (apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null)) \
    || die "could not install ${missing[*]}: run 'apt-get install -y ${missing[*]}' as root"
}

# Register qemu-aarch64-static with binfmt_misc if it is not yet; true when arm64 programs then run.
binfmt_ready() {
  [ "${PI_MODE:-}" = proot ] && return 1
  [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || return 1
  if [ ! -e "$BINFMT/qemu-aarch64" ]; then
    # Debian's own registration line (qemu-user-static), with the F flag: the kernel opens the
    # interpreter now, so it needs not exist inside the chroot.
    local line
    line=$(grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf 2>/dev/null | head -n1) || return 1
    case $line in *:*F*) ;; *) return 1 ;; esac
    [ -w "$BINFMT/register" ] && printf '%s' "$line" > "$BINFMT/register" 2>/dev/null || return 1
  fi
  grep -q '^enabled' "$BINFMT/qemu-aarch64" && grep -q '^flags:.*F' "$BINFMT/qemu-aarch64"
}

mode() {
  if binfmt_ready; then echo chroot; else echo proot; fi
}

# run ROOT CMD...: CMD inside ROOT as root, with a clean environment.
run() {
  local root=$1; shift
  local env=(env -i PATH="$SHELL_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive)
  if [ "$(mode)" = chroot ]; then
    # A private mount namespace: /proc and /dev/shm are mounted for this command only and
    # disappear when it ends, even on kill -9 (no mount is ever left inside var/).
    unshare --mount --propagation private -- sh -c '
      root=$1; shift
      mount -t proc proc "$root/proc" && mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm" || exit 70
      exec chroot "$root" "$@"' sh "$root" "${env[@]}" "$@"
  else
    # -0: root's identity faked; /proc and /sys of the host, read through.
    proot -q "$QEMU" -0 -r "$root" -b /proc -b /sys -w /root "${env[@]}" "$@"
  fi
}

base() {
  local cache=$1
  need_tools
  local key
  key=$(printf '%s\n' "$SUITE" "$ARCH" "$PACKAGES" "$PI_GROUPS" "$(sed -n '/^build_base()/,/^}/p' "$0")" | cksum | cut -d' ' -f1)
  local root="$cache/base-$key"
  if [ -e "$root/.complete" ]; then
    echo "$root"
    return
  fi
  mkdir -p "$cache"
  # A changed package list or build: the old roots go (their mounts, if any, died with their namespaces).
  find "$cache" -mindepth 1 -maxdepth 1 -name 'base-*' -exec rm -rf {} +
  if ! curl -fsS --max-time 30 -o /dev/null "$MIRROR/dists/$SUITE/Release"; then
    die "cannot reach the Debian mirror $MIRROR (set PI_MIRROR to one that this machine reaches)"
  fi
  build_base "$root" >&2
  echo "$root"
}

build_base() {
  local root=$1
  local started=$SECONDS
  echo "pi-root: debootstrap $SUITE $ARCH into $root (mode $(mode)); this takes a while under emulation"
  if [ "$(mode)" = chroot ]; then
    # debootstrap mounts /proc and /sys in the target itself: keep those mounts in a namespace.
    unshare --mount --propagation private -- \
      debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR"
  else
    debootstrap --foreign --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR"
    # The first stage leaves /proc as a link to the host's, which proot cannot bind over.
    if [ -L "$root/proc" ]; then rm "$root/proc" && mkdir "$root/proc"; fi
    run "$root" env DEBOOTSTRAP_DIR=/debootstrap /debootstrap/debootstrap --second-stage
  fi
  for group in $PI_GROUPS; do
    run "$root" groupadd --system "$group"
  done
  # Raspberry Pi OS mounts the boot partition here (INSTALL.md step 3 appends to its config.txt).
  mkdir -p "$root/boot/firmware"
  touch "$root/boot/firmware/config.txt"
  run "$root" apt-get clean
  echo "pi-root: base root ready in $((SECONDS - started)) s"
  touch "$root/.complete"
}

case ${1:-} in
  base) [ $# -eq 2 ] || die "usage: $0 base CACHE"; base "$2" ;;
  mode) need_tools; mode ;;
  run) [ $# -ge 3 ] || die "usage: $0 run ROOT CMD..."; shift; run "$@" ;;
  *) die "usage: $0 base CACHE | mode | run ROOT CMD..." ;;
esac
