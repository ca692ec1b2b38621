#!/bin/sh
# deploy/nightly.sh [--catch-up FILE] HH:MM COMMAND...
# The compose file's stand-in for a systemd timer (werkbank-backup.timer): runs COMMAND every day
# at HH:MM on the container's clock (UTC unless TZ is set). With --catch-up, it also runs COMMAND
# at once when FILE is missing or more than a day old (the timer's Persistent=true: a night the
# server was off is made up when it starts). A failed run is logged and the next night comes
# anyway; `werkbank backup` records its own failures (backup-status.json, audit log, admins).
set -u
catch_up=""
if [ "${1:-}" = "--catch-up" ]; then
    catch_up=$2
    shift 2
fi
at=$1
shift

run() {
    "$@" || echo "nightly.sh: '$*' failed (exit code $?)" >&2
}

if [ -n "$catch_up" ] && [ -z "$(find "$catch_up" -mmin -1440 2>/dev/null)" ]; then
    echo "nightly.sh: no run recorded in the last day ($catch_up): running '$*' now"
    run "$@"
fi
while :; do
    now=$(date +%s)
    next=$(date -d "today $at" +%s)
    [ "$next" -gt "$now" ] || next=$(date -d "tomorrow $at" +%s)
    sleep $((next - now))
    run "$@"
done
