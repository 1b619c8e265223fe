#!/bin/sh
# batchgen's nightly job, for cron or systemd: bare environment, no terminal, no HOME needed.
#
#   jobs/nightly.sh [ENV_FILE]          (default: $BATCHGEN_ENV_FILE, else /etc/batchgen/nightly.env)
#
# Everything comes from the env file (see nightly.env.example); no secret is in this script. The exit code is
# batchgen's own: 0 all done · 1 some failed for good · 5 incomplete, the next run continues · 3 key or quota
# refused · 4 the previous run is still going (batchgen's lock) · 2 bad manifest or settings · 70 a bug in
# batchgen · 130/143 stopped · 126/127 the batchgen command cannot be run.
#
# The night's end is batchgen's own (see docs/night-end.md): BATCHGEN_ON_FINISH is passed as one --on-finish
# argument (batchgen splits it once, like a shell would, and never runs a shell); BATCHGEN_NOTIFY, BATCHGEN_PING,
# BATCHGEN_PROXY, BATCHGEN_CA_BUNDLE and BATCHGEN_MODELS_DIR are read by batchgen from the environment (URLs with
# tokens stay out of `ps`). The hook never inherits the key, proxy credentials, notify or ping URLs.
#
# Output: batchgen's lines go to the log. This script prints nothing when all is well (0, 1, 5: normal nights),
# and exactly one line on stderr for an exit code that needs a person, so that cron's MAILTO mails it.
#
# One output folder, every night: its ledger is what makes a night that stopped with tasks submitted (5) be
# finished by the next night, by task id, without paying again. Only the contact sheet is dated: a copy of
# index.html as index-YYYY-MM-DD.html, the date in local time (the time cron and the crontab speak).
set -u
# The images, results.json, the contact sheet and the metrics are meant to be read by others (a web server,
# node_exporter): no umask 077 here. The key file keeps its own mode 600.
umask 022

say() { # the one line for a person (cron mails it), also kept in the log when there is one
    echo "batchgen nightly ($env_file): $*" >&2
    [ -n "${log:-}" ] && echo "=== $(date +'%Y-%m-%d %H:%M:%S%z') $*" >>"$log" 2>/dev/null
    return 0
}

env_file=${1:-${BATCHGEN_ENV_FILE:-/etc/batchgen/nightly.env}}
if [ ! -r "$env_file" ]; then
    say "exit 2: cannot read the settings file $env_file"
    exit 2
fi
# The env file is read as data, never run as shell: KEY=value lines, a value optionally in "…" or '…', taken
# literally ($(…), `…` and $VAR are not expanded). Sourcing it would run what it says, and turn
# BATCHGEN_OUT=/x/img-$(date +%F) into a new folder (a new ledger, paid again) every night.
number=0
while IFS= read -r line || [ -n "$line" ]; do
    number=$((number + 1))
    line=${line#"${line%%[! ]*}"} # leading spaces
    case $line in '' | '#'*) continue ;; esac
    line=${line#export }
    name=${line%%=*}
    case $name in
    "$line" | '' | [0-9]* | *[!A-Za-z0-9_]*)
        # Named by its number and the name before '=' (shown inert, cut), never the line: it may hold a key or a token
        shown=
        [ "$name" != "$line" ] && shown=" (name '$(printf '%s' "$name" | tr -c 'A-Za-z0-9_ .-' '?' | cut -c1-40)')"
        say "exit 2: $env_file: line $number is not a KEY=value line$shown"
        exit 2
        ;;
    esac
    value=${line#*=}
    case $value in
    \"*\") value=${value#\"} value=${value%\"} ;;
    \'*\') value=${value#\'} value=${value%\'} ;;
    *)
        value=${value%%[ 	]#*}                   # an unquoted value ends at " #", as in the shell
        value=${value%"${value##*[! ]}"}          # trailing spaces
        ;;
    esac
    export "$name=$value"
done <"$env_file"

if [ -z "${BATCHGEN_MANIFEST:-}" ] || [ -z "${BATCHGEN_OUT:-}" ]; then
    say "exit 2: set BATCHGEN_MANIFEST and BATCHGEN_OUT in $env_file"
    exit 2
fi
out=$BATCHGEN_OUT
case $out in
*%* | *'$'* | *'`'*)
    # A folder per night would start a new ledger every night, and submit (pay for) again the items the last
    # night left submitted. Refuse rather than pay twice.
    say "exit 2: BATCHGEN_OUT=$out has a date pattern or a shell expansion (not expanded here); use one fixed folder (the contact sheet is dated instead)"
    exit 2
    ;;
esac
bin=${BATCHGEN_BIN:-batchgen}                 # e.g. /opt/batchgen/venv/bin/batchgen (cron's PATH is short)
log=${BATCHGEN_LOG:-$out.log}
PATH=${PATH:-/usr/bin:/bin}:/usr/local/bin
export PATH

if ! mkdir -p "$out" 2>/dev/null; then
    log=
    say "exit 2: cannot create the output folder BATCHGEN_OUT=$out"
    exit 2
fi
if [ -d "$log" ] || ! mkdir -p "$(dirname "$log")" 2>/dev/null || ! : 2>/dev/null >>"$log"; then
    bad=$log
    log=
    say "exit 2: cannot write the log BATCHGEN_LOG=$bad (a file, in a folder this user can write)"
    exit 2
fi
set -- run "$BATCHGEN_MANIFEST" --out "$out" --no-progress
[ -n "${BATCHGEN_API_KEY_FILE:-}" ] && set -- "$@" --api-key-file "$BATCHGEN_API_KEY_FILE"
[ -n "${BATCHGEN_LIMIT:-}" ] && set -- "$@" --limit "$BATCHGEN_LIMIT"
[ -n "${BATCHGEN_MAX_RUNTIME:-}" ] && set -- "$@" --max-runtime "$BATCHGEN_MAX_RUNTIME"
[ -n "${BATCHGEN_METRICS_FILE:-}" ] && set -- "$@" --metrics-file "$BATCHGEN_METRICS_FILE"
[ "${BATCHGEN_REPORT:-yes}" = yes ] && set -- "$@" --report
[ -n "${BATCHGEN_ON_FINISH:-}" ] && set -- "$@" --on-finish "$BATCHGEN_ON_FINISH"
[ -n "${BATCHGEN_NOTIFY_ON:-}" ] && set -- "$@" --notify-on "$BATCHGEN_NOTIFY_ON"

echo "=== $(date +'%Y-%m-%d %H:%M:%S%z') batchgen $* (pid $$)" >>"$log"
before=$(wc -c <"$log" 2>/dev/null) || before=0 # this run's lines start here (for the exit-3 line below)
# shellcheck disable=SC2086
"$bin" "$@" ${BATCHGEN_EXTRA_ARGS:-} </dev/null >>"$log" 2>&1
code=$?
echo "=== $(date +'%Y-%m-%d %H:%M:%S%z') exit $code" >>"$log"

if [ "${BATCHGEN_REPORT:-yes}" = yes ] && [ -f "$out/index.html" ] && [ "$code" -ne 4 ]; then
    cp "$out/index.html" "$out/index-$(date +%Y-%m-%d).html" 2>/dev/null # the night's contact sheet
fi

case $code in
0 | 1 | 5) ;; # all done · some failed for good (see `batchgen status`) · incomplete, the next night continues
2) say "exit 2: a broken manifest or settings; nothing was submitted. See $log" ;;
3) # access refused: say by whom, from this run's error lines
    # the error lines of this run, less the closing summary (its exit meaning names every kind of refusal)
    errors=$(tail -c +"$((before + 1))" "$log" 2>/dev/null | grep -i 'error' | grep -v '; exit 3 (')
    if printf '%s\n' "$errors" | grep -qi 'certificate'; then
        say "exit 3: a certificate did not verify (TLS inspection? BATCHGEN_CA_BUNDLE in $env_file; batchgen doctor checks the way); the run stopped. See $log"
    elif printf '%s\n' "$errors" | grep -qi 'proxy'; then
        say "exit 3: the proxy refused us (BATCHGEN_PROXY or HTTPS_PROXY, and its credentials; batchgen doctor checks the way); the run stopped. See $log"
    elif printf '%s\n' "$errors" | grep -qiE 'key|quota|40[13]'; then
        say "exit 3: the service refused the key or the quota; the run stopped. See $log"
    else
        say "exit 3: access refused: the key or the quota, or the way (a certificate, a proxy; batchgen doctor checks it); the run stopped. See $log"
    fi
    ;;
4) say "exit 4: the previous run still holds $out; this one did nothing. See $log" ;;
70) say "exit 70: a bug in batchgen; the traceback is in $out/.batchgen/crash-*.log" ;;
126 | 127) say "exit $code: cannot run $bin (BATCHGEN_BIN in $env_file)" ;;
*)
    if [ "$code" -gt 128 ]; then
        say "exit $code: stopped by signal $((code - 128)); the next night continues. See $log"
    else
        say "exit $code: see $log"
    fi
    ;;
esac
exit "$code"
