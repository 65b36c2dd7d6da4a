#!/usr/bin/env bash
# The device agent's tests (tests/e2e/test_agent.py) run agent/fleetreg-agent under BusyBox
# ash and dash and check it with Debian's ShellCheck: the Debian packages busybox, dash and
# ShellCheck (package shellcheck), installed here with apt-get when missing (as browser.sh installs chromium).
set -euo pipefail
missing=()
command -v busybox >/dev/null 2>&1 || missing+=(busybox)
command -v dash >/dev/null 2>&1 || missing+=(dash)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "agent-shells: ${missing[*]} missing and apt-get is not available; install Debian's ${missing[*]}" >&2; exit 1; }
mkdir -p var/log
echo "fleetreg: installing Debian's ${missing[*]} for the device agent's tests (log: var/log/agent-shells-install.log)"
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo)
{ "${as_root[@]}" apt-get update && DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; } \
  >var/log/agent-shells-install.log 2>&1 || { echo "installing ${missing[*]} failed; see var/log/agent-shells-install.log" >&2; exit 1; }
