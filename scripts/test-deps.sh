#!/usr/bin/env bash
# System packages the tests need (Debian/Ubuntu). Installs what is missing when run as root (or with
# sudo); otherwise says what to install and fails. One line per need, so each is easy to find.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || need+=(mosquitto mosquitto-clients)   # the real broker of the integration tests
have strace    || need+=(strace)                         # the no-phone-home test
have prometheus || need+=(prometheus)                    # promtool + a real Prometheus (fleet exporter, rules, dashboards)
have gcc       || need+=(gcc libc6-dev)                  # the reference firmware's C core tests (ASan, UBSan)
have g++       || need+=(g++)                            # the shelf-label sketch built on the host (tests/firmware_shim)
have systemd-analyze || need+=(systemd)                  # systemd-analyze verify/security of deploy/systemd (tests)
have chromium  || need+=(chromium)                       # the validation app's real-browser test
have chromedriver || need+=(chromium-driver)             # Selenium's driver for Debian's chromium
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "missing system packages: ${need[*]} (apt-get install ${need[*]})" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
