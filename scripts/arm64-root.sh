#!/usr/bin/env bash
# Build (once) and cache an arm64 Debian 12 root for running the edge agent under qemu-user-static.
#   bash scripts/arm64-root.sh            # prints the root's path; builds it first if it is missing
#   EDGESHIP_ARM64_ROOT=/srv/arm64 bash scripts/arm64-root.sh
# Needs root, qemu-user-static, binfmt-support and debootstrap (Debian packages). The build takes
# about 4 minutes; later runs reuse the root (a stamp file marks a finished build).
set -euo pipefail
ROOT=${EDGESHIP_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeship/arm64-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { echo "[arm64-root] $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "arm64-root: needs root (debootstrap, chroot)" >&2; exit 1; }
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Make the kernel hand aarch64 binaries to qemu (binfmt_misc).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "arm64-root: qemu-aarch64 binfmt not enabled" >&2; exit 1; }

if [ ! -f "$ROOT/.edgeship-root-ok" ]; then
  log "building $ROOT (debootstrap arm64 bookworm, a few minutes)"
  rm -rf "$ROOT"; mkdir -p "$(dirname "$ROOT")"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >&2
  # The host's extra CAs (a TLS-inspecting egress proxy, if any) so pip inside can reach the registry.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  fi
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates >/dev/null 2>&1
  touch "$ROOT/.edgeship-root-ok"
  log "root ready"
fi
echo "$ROOT"
