#!/bin/sh
# The containers' entrypoint: `fedclinic ARGS`, restarted the way the systemd units restart it
# (README "Exit codes"). Docker's restart policies cannot exempt an exit code (`on-failure`
# restarts after exit 2 too), so docker-compose.yml says `restart: "no"` and this loop decides:
#   exit 1 (a failure a restart may fix, e.g. the server is away): restart after
#          $FEDCLINIC_RESTART_SECONDS (default 30);
#   exit 2 (a configuration or credential error: restarting cannot help), 0 (stopped), 130:
#          the container ends with that code (`docker compose ps` shows it; fix the problem,
#          then `docker compose up -d`).
# SIGTERM (docker compose stop/down) goes to fedclinic, which ends cleanly; nothing restarts.
set -u
delay="${FEDCLINIC_RESTART_SECONDS:-30}"
child=0
stopping=0
trap 'stopping=1; [ "$child" -ne 0 ] && kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
    fedclinic "$@" &
    child=$!
    wait "$child"
    code=$?
    while kill -0 "$child" 2>/dev/null; do      # a trapped signal interrupted `wait`
        wait "$child"
        code=$?
    done
    child=0
    if [ "$stopping" -eq 1 ] || [ "$code" -ne 1 ]; then
        if [ "$code" -eq 2 ]; then
            echo "fedclinic-entrypoint: exit 2, a configuration or credential error (the line" \
                 "above says which): not restarting. Fix it, then: docker compose up -d" >&2
        fi
        exit "$code"
    fi
    echo "fedclinic-entrypoint: exit 1, a failure a restart may fix: restarting in ${delay} s" >&2
    sleep "$delay" &
    child=$!
    wait "$child"
    child=0
    [ "$stopping" -eq 1 ] && exit 0
done
