#!/usr/bin/env bash
# The console's browser tests drive Debian's Chromium (packages chromium, chromium-driver):
# installed here with apt-get when missing. No browser is ever downloaded from elsewhere
# (Playwright's own browser download is never used: the tests pass executable_path).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
command -v apt-get >/dev/null || { echo "browser: chromium is missing and apt-get is not available; install Debian's chromium" >&2; exit 1; }
mkdir -p var/log
echo "fleetreg: installing Debian's chromium for the console's browser tests (log: var/log/chromium-install.log)"
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
{ "${as_root[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y --no-install-recommends chromium chromium-driver; } \
  >var/log/chromium-install.log 2>&1 || { echo "installing chromium failed; see var/log/chromium-install.log" >&2; exit 1; }
