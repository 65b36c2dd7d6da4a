#!/bin/sh
# The Debian root the package test installs the agent's .deb into (make agent-package-test,
# tests/agent_package): a minbase root made by Debian's mmdebstrap with what a small device
# image has (curl, openssl, ca-certificates, busybox), cached as a tarball under
# var/cache/agent-test-root/ so that a second run takes seconds. mmdebstrap is installed with
# apt-get when missing, as deploy/local/browser.sh does for chromium. Prints the tarball's path.
#
# Settings: FLEETREG_AGENT_TEST_SUITE (the host's Debian release, else bookworm),
# FLEETREG_AGENT_TEST_MIRROR (mmdebstrap's default mirror when empty). Delete the cache folder
# to make the root again (newer packages).
set -eu
umask 022
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=$root/var/cache/agent-test-root
log=$root/var/log/agent-test-root.log
packages=curl,openssl,ca-certificates,busybox

suite=${FLEETREG_AGENT_TEST_SUITE:-}
if [ -z "$suite" ] && [ -r /etc/os-release ]; then
	suite=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
	grep -q '^ID=debian' /etc/os-release || suite=
fi
suite=${suite:-bookworm}
tarball=$cache/$suite-minbase-$(printf '%s' "$packages" | tr ',' '+').tar
if [ -s "$tarball" ]; then
	echo "$tarball"
	exit 0
fi

mkdir -p "$cache" "$root/var/log"
if ! command -v mmdebstrap >/dev/null 2>&1; then
	command -v apt-get >/dev/null 2>&1 ||
		{ echo "test-root.sh: mmdebstrap is missing and apt-get is not available; install Debian's mmdebstrap" >&2; exit 1; }
	as_root=
	[ "$(id -u)" = 0 ] || as_root=sudo
	echo "fleetreg: installing Debian's mmdebstrap for the agent's package test (log: $log)" >&2
	{ $as_root apt-get update && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y --no-install-recommends mmdebstrap; } \
		>"$log" 2>&1 || { echo "test-root.sh: installing mmdebstrap failed; see $log" >&2; exit 1; }
fi

echo "fleetreg: making a $suite minbase root with $packages (once; log: $log)" >&2
partial=$tarball.partial.$$
trap 'rm -f "$partial"' EXIT INT TERM
# shellcheck disable=SC2086 # the mirror is one word or none
mmdebstrap --variant=minbase --include="$packages" --format=tar "$suite" "$partial" \
	${FLEETREG_AGENT_TEST_MIRROR:-} </dev/null >>"$log" 2>&1 ||
	{ echo "test-root.sh: mmdebstrap failed; see $log" >&2; exit 1; }
mv "$partial" "$tarball"
echo "$tarball"
