#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the browser e2e test (tests/e2e/test_browser.py),
# idempotently: nothing happens when /usr/bin/chromium and /usr/bin/chromedriver are there.
# Playwright drives this system browser (executable_path=/usr/bin/chromium); its own browser
# downloads (`playwright install`) are never used.
set -euo pipefail

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have; then
  echo "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1) already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "ERROR: installing chromium needs root (apt-get); run as root or install sudo" >&2; exit 1; }
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
echo "browser: installing Debian's chromium and chromium-driver" >&2
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null
have || { echo "ERROR: chromium / chromedriver still missing after apt-get install" >&2; exit 1; }
echo "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1) installed"
