#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver, for the dashboard's browser test, unless
# chromedriver is there already (on a Debian machine, as root or with sudo).
set -euo pipefail
if command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium and its chromedriver yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "install-chromium: installing chromium and chromium-driver"
$sudo apt-get update -q >/dev/null || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver >/dev/null
