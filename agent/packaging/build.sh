#!/bin/sh
# Builds the device agent's release files from this checkout (docs/device-agent.md, "Packaging"):
#   fleetreg-agent_VERSION_all.deb   a Debian package, made with dpkg-deb --build (no build service)
#   fleetreg-agent-VERSION.tar.gz    the agent, the systemd unit, the init script, the sample
#                                    configuration and a README, for images without dpkg
#   SHA256SUMS                       of both
# into dist/ (or --out DIR). `make agent-package` runs it.
#
# usage: agent/packaging/build.sh [--out DIR] [--agent FILE]
#   --agent FILE   package FILE instead of agent/fleetreg-agent (a patched agent, say)
# The version is FLEETREG_AGENT_VERSION if set, else agent/VERSION; SOURCE_DATE_EPOCH (else the
# last commit's time) dates every file, so two builds of one commit are the same bytes.
# Needs dpkg-deb, GNU tar and gzip; runs as any user (--root-owner-group, no fakeroot).
set -eu
umask 022

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$root/dist
agent=$root/agent/fleetreg-agent

while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:?--out needs a folder}; shift 2 ;;
	--agent) agent=${2:?--agent needs a file}; shift 2 ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done

die() { echo "build.sh: $*" >&2; exit 1; }
for tool in dpkg-deb tar gzip sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (Debian: apt-get install dpkg tar gzip coreutils)"
done
[ -f "$agent" ] || die "the agent $agent is missing"
sh -n "$agent" || die "the agent $agent is not valid sh"

if [ -n "${FLEETREG_AGENT_VERSION:-}" ]; then
	version=$FLEETREG_AGENT_VERSION
elif [ -f "$root/agent/VERSION" ]; then
	version=$(sed -n '1{s/[[:space:]]//g;p;}' "$root/agent/VERSION")
else
	version=$(git -C "$root" describe --tags --always 2>/dev/null | sed 's/^v//') || version=
fi
# Debian's upstream version rules; the tarball's name takes it too.
printf '%s\n' "$version" | grep -Eq '^[0-9][A-Za-z0-9.+~]*$' ||
	die "version '$version' is not a Debian version (digits first, then [A-Za-z0-9.+~]); see agent/VERSION"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null) || SOURCE_DATE_EPOCH=
	SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
fi
export SOURCE_DATE_EPOCH

stage=$(mktemp -d "${TMPDIR:-/tmp}/fleetreg-agent-build.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM

# The agent names its version in its User-Agent (AGENT_VERSION=...): the shipped copy says the
# package's, so an operator can tell from the intake's access log which release a device runs.
stamped=$stage/fleetreg-agent
[ "$(grep -c '^AGENT_VERSION=' "$agent")" -le 1 ] || die "$agent sets AGENT_VERSION more than once"
sed "s/^AGENT_VERSION=.*/AGENT_VERSION=$version/" "$agent" >"$stamped"
agent=$stamped

# --- The Debian package ------------------------------------------------------------------------
pkg=$stage/deb
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/init.d" \
	"$pkg/usr/share/doc/fleetreg-agent"
# The identity and secret live here: root only (the unit's StateDirectoryMode says the same).
install -d -m 0700 "$pkg/var/lib/fleetreg-agent"
install -m 0755 "$agent" "$pkg/usr/bin/fleetreg-agent"
install -m 0644 "$here/fleetreg-agent.service" "$pkg/lib/systemd/system/fleetreg-agent.service"
install -m 0755 "$here/fleetreg-agent.init" "$pkg/etc/init.d/fleetreg-agent"
# It holds the code, in derived_key mode the device's own key.
install -m 0600 "$here/fleetreg-agent.conf" "$pkg/etc/fleetreg-agent.conf"
install -m 0644 "$here/README.md" "$pkg/usr/share/doc/fleetreg-agent/README.md"
install -m 0644 "$root/docs/device-agent.md" "$pkg/usr/share/doc/fleetreg-agent/device-agent.md"
for script in postinst prerm postrm; do
	install -m 0755 "$here/debian/$script" "$pkg/DEBIAN/$script"
done
install -m 0644 "$here/debian/conffiles" "$pkg/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_kib/" \
	"$here/debian/control" >"$pkg/DEBIAN/control"
chmod 0644 "$pkg/DEBIAN/control"
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/fleetreg-agent_${version}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null

# --- The tarball -----------------------------------------------------------------------------
name=fleetreg-agent-$version
tree=$stage/$name
install -d -m 0755 "$tree"
install -m 0755 "$agent" "$tree/fleetreg-agent"
install -m 0644 "$here/fleetreg-agent.service" "$tree/fleetreg-agent.service"
install -m 0755 "$here/fleetreg-agent.init" "$tree/fleetreg-agent.init"
install -m 0644 "$here/fleetreg-agent.conf" "$tree/fleetreg-agent.conf"
install -m 0644 "$here/README.md" "$tree/README.md"
install -m 0644 "$root/docs/device-agent.md" "$tree/device-agent.md"
printf '%s\n' "$version" >"$tree/VERSION"
find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tarball=$out/$name.tar.gz
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --format=gnu -cf - "$name" |
	gzip -n -9 >"$tarball"

(cd "$out" && sha256sum "$(basename "$deb")" "$(basename "$tarball")" >SHA256SUMS)
echo "$deb"
echo "$tarball"
