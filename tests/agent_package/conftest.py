"""The device agent's Debian package installed into a Debian root (make agent-package-test).

Collected only with FLEETREG_AGENT_PACKAGE_TEST set (tests/conftest.py): it needs root (a
chroot, a mount namespace), Debian's mmdebstrap and, once, the Debian archive to make the
root (cached under var/cache/agent-test-root). The running system is the e2e one.
"""

from tests.e2e.conftest import operator, session, system

__all__ = ["operator", "session", "system"]
