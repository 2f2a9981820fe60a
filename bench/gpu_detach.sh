#!/usr/bin/env bash
# Run a long command on the GPU machine across remote commands: `start` launches it in a
# process session of its own (a remote runner that ends a command's other processes when the
# command returns leaves such a session alone), so the next transfers can bring the last parts
# meanwhile; `wait`, in a later command, waits for it to end and copies its results out.
#
#   bash bench/gpu_detach.sh start CMD [ARG...]   # once; a second start while it runs refuses
#   bash bench/gpu_detach.sh wait [DEADLINE_S] [FILE...]
#
# `wait` prints the log's last 60 lines, copies the log and each FILE into $OUT (where set) and
# exits with the command's status (124 past the deadline, default 580 s, inside a 600 s limit
# per remote command).
# State lives in $GPU_DETACH_DIR (/tmp/gpu-detach): pid, log, exit status.
set -euo pipefail

state=${GPU_DETACH_DIR:-/tmp/gpu-detach}
mkdir -p "$state"
command=${1:-}
shift || true

# Its status file marks the end: a finished process can linger as a zombie that kill -0 finds.
running() {
  [ ! -f "$state/rc" ] && [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

case "$command" in
  start)
    if [ $# -eq 0 ]; then echo "gpu-detach: start needs a command" >&2; exit 2; fi
    if running; then
      echo "gpu-detach: already running (pid $(cat "$state/pid")); not started again" >&2
      exit 0
    fi
    rm -f "$state/rc" "$state/pid"
    # The child writes its own pid (setsid may fork) and, when done, its exit status. None of
    # its streams may stay the call's: the call would not return before the command ends.
    setsid bash -c 'echo $$ > "$0/pid"; "${@}" > "$0/log" 2>&1; echo $? > "$0/rc"' \
      "$state" "$@" > /dev/null 2>&1 < /dev/null &
    for _ in $(seq 50); do [ -s "$state/pid" ] && break; sleep 0.1; done
    echo "gpu-detach: started pid $(cat "$state/pid"): $*; log $state/log" >&2
    ;;
  wait)
    deadline=${1:-580}
    shift || true
    started=$SECONDS
    while [ ! -f "$state/rc" ]; do
      if ! running && [ ! -f "$state/rc" ]; then
        sleep 1  # it may have ended between the two looks
        [ -f "$state/rc" ] || { echo "gpu-detach: nothing running and no status" >&2; exit 2; }
      fi
      if [ $((SECONDS - started)) -ge "$deadline" ]; then
        echo "gpu-detach: still running after ${deadline} s; wait again in the next call" >&2
        tail -n 60 "$state/log" || true
        exit 124
      fi
      sleep 2
    done
    tail -n 60 "$state/log" || true
    if [ -n "${OUT:-}" ]; then
      cp "$state/log" "$OUT/detached.log"
      for file in "$@"; do [ -f "$file" ] && cp "$file" "$OUT/"; done
    fi
    echo "gpu-detach: ended with status $(cat "$state/rc") after $((SECONDS - started)) s of waiting" >&2
    exit "$(cat "$state/rc")"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
