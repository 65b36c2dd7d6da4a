#!/bin/sh
# The container's entry point: runs one part of fleetreg, chosen by the first argument.
#
#   entrypoint.sh dedup|provisioning|intake|operator|ingestion|notifier   a service (python -m services.NAME)
#   entrypoint.sh migrate [ARGS...]                               the database migrations (fleetreg migrate)
#   entrypoint.sh fleetreg ARGS...                                any other fleetreg command
#
# Every branch ends in exec: the Python process replaces this shell and becomes
# the container's main process, so the SIGTERM of `docker stop` or Kubernetes
# reaches it directly and the service drains (finishes and commits its batch,
# closes its connections) before it exits. Configuration comes only from the
# environment (see .env.example and docs/operations.md).
set -eu

usage() { # EXIT_CODE
  echo "usage: entrypoint.sh dedup|provisioning|intake|operator|ingestion|notifier|migrate [ARGS...] | fleetreg ARGS..." >&2
  exit "$1"
}

# A secret copied unchanged from .env.example is refused before anything starts.
refuse_placeholder() { # NAME VALUE
  case "$2" in
    *change-me*)
      echo "entrypoint.sh: $1 still holds the placeholder from .env.example; set a random value" >&2
      exit 78 ;;
  esac
}
refuse_placeholders() {
  refuse_placeholder FLEETREG_SECRET_KEY "${FLEETREG_SECRET_KEY:-}"
  refuse_placeholder DATABASE_URL "${DATABASE_URL:-}"
}

# The soft file-descriptor limit up to the hard one. Kubernetes sets no rlimit of its own, so
# a pod gets the runtime's (often a soft 1,024 under a hard 1,048,576, or more); each client
# connection is a descriptor and the per-process connection cap is derived from this limit
# (docs/operations.md, "Connections and file descriptors"). Compose sets both (20,000).
# shellcheck disable=SC3045 # the image's /bin/sh is dash, whose ulimit has -H and -n
raise_fd_limit() {
  hard=$(ulimit -Hn)
  ulimit -n "$hard" 2>/dev/null ||
    echo "entrypoint.sh: could not raise the file-descriptor limit to $hard; it stays $(ulimit -n)" >&2
}

[ "$#" -ge 1 ] || usage 64
command=$1
shift

case "$command" in
  dedup | provisioning | intake | operator | ingestion | notifier)
    refuse_placeholders
    raise_fd_limit
    exec python -m "services.$command" "$@" ;;
  migrate)
    refuse_placeholders
    exec fleetreg migrate "$@" ;;
  fleetreg)
    refuse_placeholders
    exec fleetreg "$@" ;;
  -h | --help | help)
    usage 0 ;;
  *)
    echo "entrypoint.sh: unknown command '$command'" >&2
    usage 64 ;;
esac
