#!/usr/bin/env bash
# Proof on aarch64: the project's wheel with the `edge` extra, installed from the registries' aarch64
# wheels into an arm64 Debian 12 root, runs the real agent under qemu-user-static against a Mosquitto
# on this host's loopback; a signed bundle is published to it and to an x86 agent, and both must
# answer the same rows within the bundle's parity tolerance.   make arm64-smoke   (needs root)
#   EDGESHIP_ARM64_ROOT=DIR  where the cached root lives (default ~/.cache/edgeship/arm64-bookworm)
#   PYTHON=...               the host's python with the project's edge+cloud extras (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
log() { echo "[arm64-smoke] $*"; }

ROOT=$(bash scripts/arm64-root.sh)
log "arm64 root: $ROOT"
VENV=/opt/edgeship                      # inside the root
WORK=$(mktemp -d "$ROOT/tmp/smoke.XXXXXX")
cleanup() {
  mountpoint -q "$ROOT/proc" && umount "$ROOT/proc" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Only /proc: with /sys mounted, onnxruntime segfaults under qemu (see shared DESIGN notes).
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
  ORT_DISABLE_TELEMETRY=1 "$@"; }

log "building the wheel on the host"
rm -rf "$WORK/dist"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
WHEEL=$(basename "$WORK"/dist/edgeship-*.whl)
log "wheel: $WHEEL"

in_root test -x $VENV/bin/python || in_root python3 -m venv $VENV
t0=$(date +%s)
log "pip install '$WHEEL[edge]' inside the arm64 root (aarch64 wheels from the registry)"
in_root $VENV/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  "/tmp/$(basename "$WORK")/dist/$WHEEL"
in_root $VENV/bin/python -m pip install -q --disable-pip-version-check \
  "/tmp/$(basename "$WORK")/dist/$WHEEL[edge]"
log "installed in $(( $(date +%s) - t0 )) s"
in_root $VENV/bin/python -m pip check
in_root $VENV/bin/python -m pip list 2>/dev/null | grep -i -E '^(edgeship|numpy|ai-edge-litert|onnxruntime|tensorflow|pandas|scikit-learn|gradio) ' \
  | sed 's/^/[arm64-smoke]   /'

log "uname -m inside the root: $(in_root uname -m)"
log "python platform.machine(): $(in_root $VENV/bin/python -c 'import platform; print(platform.machine())')"

PYTHONPATH=$REPO ORT_DISABLE_TELEMETRY=1 "$PYTHON" scripts/arm64_smoke.py --root "$ROOT" --work "$WORK" \
  --arm-python $VENV/bin/python
