# shellcheck shell=bash
# Recorded processes of cluster/up.sh, checked before anyone trusts or signals them (sourced by
# up.sh and down.sh). A record is "PID STARTTIME" and a marker line: STARTTIME is field 22 of
# /proc/PID/stat (clock ticks after boot; exec does not change it), the marker a string the
# process's command line must contain (its state or temp directory). A PID that was reused by
# another process fails either check and is never signalled.

start_time() {  # pid -> field 22 of /proc/PID/stat (the command name in field 2 may hold spaces)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    local rest=${stat##*) }
    # shellcheck disable=SC2206
    local fields=($rest)
    echo "${fields[19]}"
}

record_pid() {  # file, pid, marker (a process already gone is recorded with start time 0)
    local started
    started=$(start_time "$2") || started=0
    printf '%s %s\n%s\n' "$2" "$started" "$3" > "$1"
}

same_process() {  # file: true when its PID is alive, started when recorded and runs the marker
    local f=$1 pid started marker now cmdline
    [[ -f $f ]] || return 1
    read -r pid started < "$f" || return 1
    marker=$(sed -n 2p "$f")
    [[ $pid =~ ^[0-9]+$ && $pid != 0 && -n $started && -n $marker ]] || return 1
    now=$(start_time "$pid") || return 1
    [[ $now == "$started" ]] || return 1
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$marker"* ]]
}

recorded_pid() { read -r pid _ < "$1" && echo "$pid"; }
