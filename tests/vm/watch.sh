#!/usr/bin/env bash
# tests/vm/watch.sh - watch the guest console while QEMU runs; end the run at
# once when the guest kernel crashes or a check stops making progress.
#
# usage: watch.sh CONSOLE_LOG QEMU_PID VERDICT_FILE
#
# Reads CONSOLE_LOG as it grows (the guest's ttyS0). Exits 0 with an empty
# VERDICT_FILE when QEMU_PID ends on its own. Otherwise it kills QEMU_PID
# (TERM, the process run.sh started), writes VERDICT_FILE and exits 1:
#   line 1: "CHECK<TAB>reason"   (CHECK is the check that was running)
#   then:   the console lines around the event (the trace)
# Events:
#   - a kernel crash on the live console: kernel BUG, Oops, panic,
#     "usercopy:", general protection fault, a soft lockup, "Call Trace:";
#     only lines that look like kernel messages ("[ 12.345678] ...") count,
#     and only before the runner's final "==== kernel log" dump.
#   - no progress for TANDEM_VM_STALL_S seconds (default 300): progress is
#     any console line except a heartbeat, or a heartbeat whose I/O counter
#     changed. The guest runner prints "TANDEM-VM-HEARTBEAT check=NAME io=N"
#     every few seconds, so a hung guest and a check stuck with no I/O both
#     stop progress.
set -u
LOG=$1 PID=$2 VERDICT=$3
STALL_S=${TANDEM_VM_STALL_S:-300}
AFTER_LINES=40      # trace lines kept after the first crash line
BEFORE_LINES=10     # and before it
: > "$VERDICT"

check="(boot)"
ring=()             # the last BEFORE_LINES console lines
live=1              # 0 once the runner dumps the kernel log
crash_first=""      # first crash line seen
crash_lines=()      # trace collected after it
crash_deadline=0
last_progress=$SECONDS
last_io=""

verdict() {
  local reason=$1; shift
  {
    printf '%s\t%s\n' "$check" "$reason"
    printf '%s\n' "$@"
  } > "$VERDICT"
  kill -TERM "$PID" 2>/dev/null
  exit 1
}

crash_re='(kernel BUG at|BUG: |Oops|Kernel panic|usercopy: |general protection fault|watchdog: BUG|Call Trace:|invalid opcode:)'

handle() {
  local line=${1%$'\r'}
  if [ -n "$crash_first" ]; then
    crash_lines+=("$line")
    [ ${#crash_lines[@]} -ge $AFTER_LINES ] && finish_crash
    return
  fi
  case $line in
    "TANDEM-VM-HEARTBEAT "*)
      local io=${line##*io=}
      if [ "$io" != "$last_io" ]; then last_io=$io; last_progress=$SECONDS; fi
      return ;;
    "==== BEGIN "*) check=${line#==== BEGIN }; check=${check%% *} ;;
    "==== END "*) local n=${line#==== END }; check="(after ${n%% *})" ;;
    "==== kernel log"*) live=0 ;;
  esac
  last_progress=$SECONDS
  if [ $live = 1 ] && [[ $line =~ ^\[\ *[0-9]+\.[0-9]+\]\  ]] && [[ $line =~ $crash_re ]]; then
    crash_first=$line
    crash_lines=("${ring[@]}" "$line")
    crash_deadline=$((SECONDS + 3))
    return
  fi
  ring+=("$line")
  [ ${#ring[@]} -gt $BEFORE_LINES ] && ring=("${ring[@]:1}")
}

finish_crash() {
  local msg=${crash_first#*] }
  verdict "guest kernel crash: $msg" "${crash_lines[@]}"
}

exec 3<"$LOG" || exit 2
pending="" line=""
while :; do
  while IFS= read -r line <&3; do
    handle "$pending$line"
    pending=""
  done
  pending+=$line
  if [ -n "$crash_first" ] && [ $SECONDS -ge $crash_deadline ]; then finish_crash; fi
  if ! kill -0 "$PID" 2>/dev/null; then
    [ -n "$crash_first" ] && finish_crash
    exit 0
  fi
  if [ $((SECONDS - last_progress)) -ge "$STALL_S" ]; then
    verdict "no progress for $STALL_S s (no console output, no I/O)" "${ring[@]}"
  fi
  sleep 1
done
