#!/bin/sh
# batchgen's nightly job, for cron or systemd: bare environment, no terminal, no HOME needed.
#
#   jobs/nightly.sh [ENV_FILE]          (default: $BATCHGEN_ENV_FILE, else /etc/batchgen/nightly.env)
#
# Everything comes from the env file (see jobs/nightly.env.example); no secret is in this script. The exit code
# is batchgen's own: 0 all done · 1 some failed for good · 5 incomplete, the next run continues · 3 key or quota
# refused · 4 the previous run is still going (batchgen's lock) · 2 bad manifest or settings · 130/143 stopped.
set -u
umask 077

env_file=${1:-${BATCHGEN_ENV_FILE:-/etc/batchgen/nightly.env}}
if [ ! -r "$env_file" ]; then
    echo "nightly.sh: cannot read the settings file $env_file" >&2
    exit 2
fi
set -a
# shellcheck disable=SC1090
. "$env_file"
set +a

: "${BATCHGEN_MANIFEST:?set BATCHGEN_MANIFEST in $env_file}"
: "${BATCHGEN_OUT:?set BATCHGEN_OUT in $env_file}"
bin=${BATCHGEN_BIN:-batchgen}                 # e.g. /opt/batchgen/venv/bin/batchgen (cron's PATH is short)
out=$(date -u +"$BATCHGEN_OUT")               # strftime patterns allowed: /srv/images/%Y-%m-%d for dated runs
log=${BATCHGEN_LOG:-$out.log}
PATH=${PATH:-/usr/bin:/bin}:/usr/local/bin
export PATH

mkdir -p "$(dirname "$log")" "$out" || exit 2
set -- run "$BATCHGEN_MANIFEST" --out "$out" --no-progress
[ -n "${BATCHGEN_API_KEY_FILE:-}" ] && set -- "$@" --api-key-file "$BATCHGEN_API_KEY_FILE"
[ -n "${BATCHGEN_LIMIT:-}" ] && set -- "$@" --limit "$BATCHGEN_LIMIT"
[ -n "${BATCHGEN_MAX_RUNTIME:-}" ] && set -- "$@" --max-runtime "$BATCHGEN_MAX_RUNTIME"
[ -n "${BATCHGEN_METRICS_FILE:-}" ] && set -- "$@" --metrics-file "$BATCHGEN_METRICS_FILE"
[ "${BATCHGEN_REPORT:-yes}" = yes ] && set -- "$@" --report

{
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) batchgen $* (pid $$)"
} >>"$log"
# shellcheck disable=SC2086
$bin "$@" ${BATCHGEN_EXTRA_ARGS:-} </dev/null >>"$log" 2>&1
code=$?
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) exit $code" >>"$log"
exit "$code"
