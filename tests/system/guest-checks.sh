#!/bin/bash
# The system tier's checks, run inside the VM as root under systemd (PID 1) by
# nodeagent-system-tier.service (tests/system/image.py), from the disk the host
# injected on /mnt/inject: repo/ (a copy of the work tree), wheels/ (every
# dependency, built on the host: the VM has no network), this script.
#
# It installs nodeagent as the README says (make install), configures a kernel
# interface fed from a file, and checks the unit under the real systemd: ready
# via READY=1, the feed reaches the kernel, reload, the watchdog, stop keeps
# the peers, the sandbox holds, the journal holds no client value. Shell, not
# Python: Python in this TCG guest is ~30x slower than on the host.
#
# To the host, on ttyS1 (no kernel or systemd output there):
#   RESULT <check> PASS|FAIL <message>   one line per check, in order
#   TIME <phase> <seconds>               guest-side timings
#   DONE                                 the script got to its end
# Commentary and diagnostics go to stdout (ttyS0, the console log).
# The unit powers the machine off when this script ends, however it ends.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

IN=/mnt/inject
SRC=/root/nodeagent-src
ETC=/etc/nodeagent
IF=wg0
PORT=51820
UIF=wgu0 # a wireguard-go interface (check_userspace)
UAPI_SOCK=/run/wireguard/$UIF.sock
WORK=$(mktemp -d)
FEED_PEERS=/dev/null # the peers of the feed file as it stands

stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1

declare -A STATUS
say() { echo "guest: $*"; }
report() {
    local check=$1 status=$2 msg=${3:-}
    msg=${msg//$'\n'/ | }
    STATUS[$check]=$status
    echo "RESULT $check $status $msg" >&3
    echo "RESULT $check $status $msg"
}
pass() { report "$1" PASS "${2:-ok}"; }
fail() { report "$1" FAIL "$2"; }
passed() { [[ ${STATUS[$1]:-} == PASS ]]; }
# needs CHECK PREREQ...: a check whose prerequisites failed is reported, not run.
needs() {
    local check=$1 p
    shift
    for p; do
        passed "$p" || { fail "$check" "not run: $p did not pass"; return 1; }
    done
}
uptime_s() { local up _; read -r up _ </proc/uptime; echo "$up"; }
T_LAST=$(uptime_s)
echo "TIME boot $T_LAST" >&3
timing() {
    local t
    t=$(uptime_s)
    echo "TIME $1 $(awk -v a="$t" -v b="$T_LAST" 'BEGIN { printf "%.1f", a - b }')" >&3
    T_LAST=$t
}
# wait_for SECONDS CMD...: true once CMD is, false if it never was within SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS >= deadline)) && return 1
        sleep 1
    done
}
prop() { systemctl show -p "$1" --value nodeagent.service; }
unit_state() { systemctl show -p ActiveState,SubState,NRestarts,MainPID,Result nodeagent.service | tr '\n' ' '; }
running() { [[ $(prop ActiveState) == active && $(prop SubState) == running ]]; }
diagnose() {
    say "--- systemctl status nodeagent"
    systemctl status --no-pager -l nodeagent.service 2>&1 | tail -n 30
    say "--- journalctl -u nodeagent (tail)"
    journalctl --no-pager -u nodeagent.service -o short-monotonic 2>&1 | tail -n 60
}

# --- the feed ------------------------------------------------------------------------
# Peers are "key ip4 ip6" lines; clients live in 10.66.7.0/24 and fd00:66:7::/64,
# which nothing else in the configuration names (the journal check greps for them).
genkey() { wg genkey | wg pubkey; }
peer() { printf '%s 10.66.7.%s/32 fd00:66:7::%s/128\n' "$(genkey)" "$1" "$1"; }
feed_json() { # VERSION < peers
    local version=$1 sep="" key ip4 ip6
    printf '{"version": "%s", "full": true, "wireguard": {"%s": {"peers": [' "$version" "$IF"
    while read -r key ip4 ip6; do
        printf '%s\n  {"public_key": "%s", "allowed_ips": ["%s", "%s"]}' "$sep" "$key" "$ip4" "$ip6"
        sep=,
    done
    printf '\n]}'
    # With USERSPACE_PEERS set, the userspace interface's peers too.
    if [[ -n ${USERSPACE_PEERS:-} ]]; then
        printf ', "%s": {"peers": [' "$UIF"
        sep=""
        while read -r key ip4 ip6; do
            printf '%s\n  {"public_key": "%s", "allowed_ips": ["%s", "%s"]}' "$sep" "$key" "$ip4" "$ip6"
            sep=,
        done <"$USERSPACE_PEERS"
        printf '\n]}'
    fi
    printf '}}\n'
}
# "key ip ip" with the IPs sorted, lines sorted: the feed's peers and the kernel's compare.
normalize() {
    local key rest
    while read -r key rest; do
        printf '%s %s\n' "$key" "$(tr ' \t' '\n\n' <<<"$rest" | sed '/^$/d' | sort | paste -sd' ')"
    done | sort
}
kernel_peers() { wg show "$IF" allowed-ips 2>/dev/null | normalize; }
kernel_matches() { [[ "$(kernel_peers)" == "$(normalize <"$1")" ]]; }
# What differs, by count (the console gets the lists).
peer_diff() {
    local want=$1 have
    have=$(kernel_peers)
    local missing extra
    missing=$(comm -23 <(normalize <"$want") <(printf '%s\n' "$have" | sed '/^$/d') | wc -l)
    extra=$(comm -13 <(normalize <"$want") <(printf '%s\n' "$have" | sed '/^$/d') | wc -l)
    say "feed:"
    normalize <"$want"
    say "kernel ($IF):"
    printf '%s\n' "$have"
    echo "feed has $(wc -l <"$want") peers; kernel differs by $missing missing, $extra unexpected"
}

# --- 1. install as the README says ------------------------------------------------------
check_install() {
    local problems=() rc
    say "copying the repository to $SRC; make install"
    cp -a "$IN/repo" "$SRC"
    (cd "$SRC" && make install PIP_INSTALL_ARGS="--no-index --find-links=$IN/wheels") \
        >"$WORK/install.log" 2>&1
    rc=$?
    tail -n 40 "$WORK/install.log"
    if ((rc != 0)); then
        fail install "make install exited $rc: $(tail -n 3 "$WORK/install.log")"
        return
    fi
    [[ -x /opt/nodeagent/bin/nodeagent ]] || problems+=("no /opt/nodeagent/bin/nodeagent")
    [[ $(readlink /usr/local/bin/nodeagent) == /opt/nodeagent/bin/nodeagent ]] ||
        problems+=("/usr/local/bin/nodeagent is not a link to /opt/nodeagent/bin/nodeagent")
    local user
    for user in nodeagent nodeagent-collector; do
        id -u "$user" >/dev/null 2>&1 || problems+=("no user $user")
        getent group "$user" >/dev/null || problems+=("no group $user")
    done
    [[ $(stat -c '%a %U:%G' "$ETC" 2>/dev/null) == "750 root:nodeagent" ]] ||
        problems+=("$ETC is '$(stat -c '%a %U:%G' "$ETC" 2>&1)', not '750 root:nodeagent'")
    cmp -s "$SRC/config.example.yaml" "$ETC/config.yaml" ||
        problems+=("$ETC/config.yaml is not config.example.yaml")
    local unit
    for unit in nodeagent.service nodeagent-collector.service; do
        [[ -f /etc/systemd/system/$unit ]] || problems+=("no /etc/systemd/system/$unit")
        [[ $(systemctl is-enabled "$unit" 2>&1) == disabled ]] ||
            problems+=("$unit is $(systemctl is-enabled "$unit" 2>&1), not disabled")
        systemctl is-active -q "$unit" && problems+=("$unit was started")
    done
    grep -qx wireguard /etc/modules-load.d/nodeagent.conf 2>/dev/null ||
        problems+=("/etc/modules-load.d/nodeagent.conf does not name wireguard")
    [[ -d /sys/module/wireguard ]] || problems+=("the wireguard module is not loaded")
    [[ -f /usr/share/doc/nodeagent/README.md ]] || problems+=("no /usr/share/doc/nodeagent/README.md")
    if ((${#problems[@]})); then
        fail install "$(printf '%s; ' "${problems[@]}")"
    else
        pass install "venv, link, users, $ETC 0750 root:nodeagent, config from the example, units (disabled, inactive), modules-load.d, wireguard loaded, docs"
    fi
}

# --- 1. configure; check-config ------------------------------------------------------------
check_config() {
    needs check-config install || return
    umask 077
    wg genkey | install -o nodeagent -g nodeagent -m 0600 /dev/stdin "$ETC/$IF.key"
    umask 022
    cat >"$WORK/config.yaml" <<EOF
node: {name: system-tier}
wireguard:
  interfaces:
    - name: $IF
      backend: kernel
      create: true
      private_key_file: $ETC/$IF.key
      listen_port: $PORT
      addresses: [10.66.0.1/16, "fd00:66::1/64"]
feed: {path: $ETC/feed.json}
load: {interfaces: [lo], capacity: 1Gbit}
http: {listen: ["127.0.0.1:9586"]}
log: {level: info, format: text}
EOF
    install -o root -g nodeagent -m 0640 "$WORK/config.yaml" "$ETC/config.yaml"
    for i in 1 2 3 4 5; do peer "$i"; done >"$WORK/peers1"
    feed_json 1 <"$WORK/peers1" >"$WORK/feed.json"
    install -o root -g nodeagent -m 0640 "$WORK/feed.json" "$ETC/feed.json"
    FEED_PEERS=$WORK/peers1
    local out rc
    out=$(nodeagent check-config -c "$ETC/config.yaml" 2>&1)
    rc=$?
    echo "$out"
    if ((rc == 0)); then
        pass check-config "nodeagent check-config exit 0"
    else
        fail check-config "nodeagent check-config exit $rc: $out"
    fi
}

# --- 1. systemctl enable --now; active via READY=1 -------------------------------------------
check_start() {
    needs start check-config || return
    local out rc
    out=$(systemctl enable --now nodeagent 2>&1)
    rc=$?
    echo "$out"
    local state
    state=$(unit_state)
    say "after enable --now: $state"
    if ((rc != 0)); then
        diagnose
        fail start "systemctl enable --now nodeagent exit $rc ($state): $out"
        return
    fi
    if [[ $(prop Type) != notify ]]; then
        fail start "the unit's Type is $(prop Type), not notify"
    elif ! running || [[ $(prop NRestarts) != 0 ]]; then
        diagnose
        fail start "not active/running with NRestarts=0 after enable --now: $state"
    elif [[ $(systemctl is-enabled nodeagent) != enabled ]]; then
        fail start "active but not enabled: $(systemctl is-enabled nodeagent)"
    else
        local started ready
        started=$(prop ExecMainStartTimestampMonotonic)
        ready=$(prop ActiveEnterTimestampMonotonic)
        pass start "active (running) via READY=1 (Type=notify), $(awk -v a="$ready" -v b="$started" 'BEGIN { printf "%.1f", (a - b) / 1e6 }') s from exec to ready; $state"
    fi
}

# --- 2. the kernel interface gets the feed's peers -----------------------------------------------
check_peers() {
    needs peers start || return
    if ! wait_for 120 kernel_matches "$WORK/peers1"; then
        diagnose
        fail peers "within 120 s: $(peer_diff "$WORK/peers1" | tail -n 1)"
        return
    fi
    local problems=()
    [[ $(wg show "$IF" listen-port) == "$PORT" ]] || problems+=("listen port $(wg show "$IF" listen-port)")
    ip -o addr show dev "$IF" | grep -q ' 10.66.0.1/16 ' || problems+=("no 10.66.0.1/16 on $IF")
    ip -o link show dev "$IF" | grep -q '[<,]UP[,>]' || problems+=("$IF is not up")
    local pub
    pub=$(wg pubkey <"$ETC/$IF.key")
    [[ $(wg show "$IF" public-key) == "$pub" ]] || problems+=("$IF does not have the configured key")
    if ((${#problems[@]})); then
        fail peers "peers match, but: $(printf '%s; ' "${problems[@]}")"
    else
        pass peers "wg show $IF: the feed's $(wc -l <"$WORK/peers1") peers with their allowed IPs; the link was created with its key, port $PORT and address, up"
    fi
}

# --- 3. a changed feed, systemctl reload, the kernel follows ------------------------------------
check_reload() {
    needs reload peers || return
    local pid
    pid=$(prop MainPID)
    # Version 2: peers 1 and 2 replaced by new keys on the same addresses, peer 3 moved
    # to .9. The same byte size, written in place and its mtime put back: the file
    # watcher (inode, size, mtime) sees nothing, only SIGHUP re-reads it.
    {
        peer 1
        peer 2
        sed -n 3p "$WORK/peers1" | sed 's/\.3\//.9\//; s/::3\//::9\//'
        sed -n '4,5p' "$WORK/peers1"
    } >"$WORK/peers2"
    feed_json 2 <"$WORK/peers2" >"$WORK/feed2.json"
    if [[ $(stat -c %s "$WORK/feed2.json") != $(stat -c %s "$ETC/feed.json") ]]; then
        fail reload "test bug: version 2 of the feed is not the same size as version 1"
        return
    fi
    # Overwritten without truncating (the size never changes), then the old mtime.
    touch -r "$ETC/feed.json" "$WORK/mtime-ref"
    dd if="$WORK/feed2.json" of="$ETC/feed.json" conv=notrunc status=none
    touch -r "$WORK/mtime-ref" "$ETC/feed.json"
    FEED_PEERS=$WORK/peers2
    sleep 5
    local note="the file watcher had not seen the in-place write"
    if ! kernel_matches "$WORK/peers1"; then
        note="note: the kernel changed before the reload (the file watcher saw the write)"
    fi
    local before out rc
    before=$(journalctl -u nodeagent -o cat --no-pager | grep -c 'config_reload done')
    out=$(systemctl reload nodeagent 2>&1)
    rc=$?
    if ((rc != 0)); then
        diagnose
        fail reload "systemctl reload nodeagent exit $rc: $out"
        return
    fi
    if ! wait_for 60 kernel_matches "$WORK/peers2"; then
        diagnose
        fail reload "within 60 s of the reload: $(peer_diff "$WORK/peers2" | tail -n 1)"
        return
    fi
    local after
    after=$(journalctl -u nodeagent -o cat --no-pager | grep -c 'config_reload done')
    if [[ $(prop MainPID) != "$pid" ]] || ! running || [[ $(prop NRestarts) != 0 ]]; then
        fail reload "the kernel followed, but the unit did not stay up in the same process: $(unit_state) (was MainPID=$pid)"
    elif ((after <= before)); then
        fail reload "the kernel followed, but the journal has no new 'config_reload done'"
    else
        pass reload "2 peers replaced, 1 moved, in the kernel after systemctl reload; same MainPID, active; $note"
    fi
}

# --- 6b. wireguard-go: the agent reaches its UAPI socket through the README's drop-in -------
socket_closed() { [[ -S $UAPI_SOCK && $(stat -c '%U %G %a' "$UAPI_SOCK") == "root root 700" ]]; }
userspace_peers() { wg show "$UIF" allowed-ips 2>/dev/null | normalize; }
userspace_matches() { [[ "$(userspace_peers)" == "$(normalize <"$WORK/upeers")" ]]; }
start_wireguard_go() {
    WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go "$UIF" >>"$WORK/wireguard-go.log" 2>&1
}
check_userspace() {
    needs userspace reload || return
    modprobe tun 2>/dev/null
    if ! start_wireguard_go || ! wait_for 30 socket_closed; then
        fail userspace "wireguard-go did not make its socket: $(stat -c '%A %U:%G' "$UAPI_SOCK" 2>&1) $(tail -n 3 "$WORK/wireguard-go.log")"
        return
    fi
    if setpriv --reuid=nobody --regid=nogroup --clear-groups wg show "$UIF" >/dev/null 2>&1; then
        fail userspace "user nobody could use the UAPI socket"
        return
    fi
    local i out
    for i in 21 22 23; do peer "$i"; done >"$WORK/upeers"
    # The feed names the new interface too, replaced whole (a rename, as docs/feed.md says).
    USERSPACE_PEERS=$WORK/upeers feed_json 3 <"$FEED_PEERS" >"$WORK/feed3.json"
    install -o root -g nodeagent -m 0640 "$WORK/feed3.json" "$ETC/.feed.json.new"
    mv "$ETC/.feed.json.new" "$ETC/feed.json"
    sed "s|^  interfaces:\$|  interfaces:\n    - {name: $UIF, backend: userspace}|" "$WORK/config.yaml" >"$WORK/config3.yaml"
    install -o root -g nodeagent -m 0640 "$WORK/config3.yaml" "$ETC/config.yaml"
    # As the README says for a userspace interface.
    install -D -m 0644 /usr/share/doc/nodeagent/userspace.conf \
        /etc/systemd/system/nodeagent.service.d/userspace.conf
    if ! out=$(systemctl daemon-reload 2>&1 && systemctl restart nodeagent 2>&1); then
        diagnose
        fail userspace "daemon-reload and restart with userspace.conf: $out"
        return
    fi
    if ! wait_for 90 userspace_matches; then
        diagnose
        fail userspace "within 90 s of the restart wireguard-go does not hold the feed's peers: $(userspace_peers | wc -l) of 3"
        return
    fi
    # wireguard-go restarted behind the agent's back: a new socket, and the peers back.
    ip link del "$UIF"
    wait_for 10 test ! -S "$UAPI_SOCK"
    if ! start_wireguard_go || ! wait_for 30 socket_closed; then
        fail userspace "wireguard-go did not start again: $(tail -n 3 "$WORK/wireguard-go.log")"
        return
    fi
    if ! wait_for 60 userspace_matches; then
        diagnose
        fail userspace "within 60 s of wireguard-go's restart its peers are not back: $(userspace_peers | wc -l) of 3"
        return
    fi
    if ! kernel_matches "$FEED_PEERS"; then
        fail userspace "the kernel interface changed: $(peer_diff "$FEED_PEERS" | tail -n 1)"
        return
    fi
    local caps
    caps=$(awk '/^CapEff/ { print $2 }' "/proc/$(prop MainPID)/status")
    if [[ $caps != 0000000000001002 ]]; then
        fail userspace "with userspace.conf the agent's CapEff is $caps, not CAP_NET_ADMIN and CAP_DAC_OVERRIDE (0000000000001002)"
        return
    fi
    pass userspace "the socket stays 0700 root (user nobody refused); with userspace.conf the agent (CapEff $caps) synced wireguard-go's 3 peers, and again after wireguard-go restarted"
}

# --- 6. the sandbox holds -------------------------------------------------------------------------
check_sandbox() {
    needs sandbox start || return
    local pid uid gid problems=() facts=()
    pid=$(prop MainPID)
    uid=$(id -u nodeagent)
    gid=$(id -g nodeagent)
    local status
    status=$(cat "/proc/$pid/status")
    local field
    for field in Uid Gid; do
        local want=$uid
        [[ $field == Gid ]] && want=$gid
        read -r -a ids <<<"$(awk -v f="$field:" '$1 == f { print $2, $3, $4, $5 }' <<<"$status")"
        [[ ${ids[*]} == "$want $want $want $want" ]] ||
            problems+=("$field is ${ids[*]}, not nodeagent's $want")
    done
    local capeff capprm capbnd capamb nnp seccomp
    capeff=$(awk '$1 == "CapEff:" { print $2 }' <<<"$status")
    capprm=$(awk '$1 == "CapPrm:" { print $2 }' <<<"$status")
    capbnd=$(awk '$1 == "CapBnd:" { print $2 }' <<<"$status")
    capamb=$(awk '$1 == "CapAmb:" { print $2 }' <<<"$status")
    nnp=$(awk '$1 == "NoNewPrivs:" { print $2 }' <<<"$status")
    seccomp=$(awk '$1 == "Seccomp:" { print $2 }' <<<"$status")
    facts+=("uid/gid nodeagent" "CapEff=$capeff CapPrm=$capprm CapBnd=$capbnd CapAmb=$capamb" "NoNewPrivs=$nnp Seccomp=$seccomp")
    [[ $capeff == 0000000000001000 ]] || problems+=("CapEff is $capeff, not CAP_NET_ADMIN alone (0000000000001000)")
    [[ $capbnd == 0000000000001000 ]] || problems+=("CapBnd is $capbnd, not CAP_NET_ADMIN alone")
    [[ $nnp == 1 ]] || problems+=("NoNewPrivs is $nnp")
    [[ $seccomp == 2 ]] || problems+=("no seccomp filter (Seccomp: $seccomp)")
    # The root of its mount namespace is read-only (ProtectSystem=strict).
    local rootopts
    rootopts=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -n 1)
    [[ $rootopts == ro || $rootopts == ro,* ]] || problems+=("/ is mounted '$rootopts' in its namespace, not ro")
    facts+=("/ mounted $rootopts")
    # Writes from inside its mount namespace as its user: /tmp (PrivateTmp) works, which
    # shows nsenter itself does; /etc, /var/lib, /root, /opt do not. As root in the same
    # namespace /etc still fails: read-only, not merely a matter of permissions.
    local as_agent=(nsenter --target "$pid" --mount --setuid "$uid" --setgid "$gid")
    local out
    if ! out=$("${as_agent[@]}" sh -c 'touch /tmp/sandbox-probe && rm /tmp/sandbox-probe' 2>&1); then
        problems+=("control: nodeagent cannot write its private /tmp either ($out), so the write checks prove nothing")
    fi
    local path denied=()
    for path in /etc/sandbox-probe /var/lib/sandbox-probe /root/sandbox-probe /opt/nodeagent/sandbox-probe "$ETC/sandbox-probe"; do
        if out=$("${as_agent[@]}" sh -c "touch $path" 2>&1); then
            problems+=("nodeagent could write $path")
        else
            denied+=("$path (${out##*: })")
        fi
        rm -f "$path"
    done
    facts+=("nodeagent cannot write ${denied[*]}")
    if out=$(nsenter --target "$pid" --mount sh -c 'touch /etc/sandbox-probe' 2>&1); then
        problems+=("root in the agent's mount namespace could write /etc")
    else
        facts+=("root in its namespace: /etc ${out##*: }")
    fi
    rm -f /etc/sandbox-probe
    if ((${#problems[@]})); then
        fail sandbox "$(printf '%s; ' "${problems[@]}")"
    else
        pass sandbox "$(printf '%s; ' "${facts[@]}")"
    fi
}

# --- 4. a hung agent is restarted by the watchdog ----------------------------------------------
check_watchdog() {
    needs watchdog start || return
    local pid restarts sec
    pid=$(prop MainPID)
    restarts=$(prop NRestarts)
    sec=$(prop WatchdogUSec)
    say "stopping MainPID $pid with SIGSTOP (WatchdogUSec=$sec)"
    local t0=$SECONDS
    kill -STOP "$pid"
    restarted() {
        [[ $(prop NRestarts) -gt $restarts && $(prop MainPID) != "$pid" && $(prop MainPID) != 0 ]] && running
    }
    if ! wait_for 300 restarted; then
        diagnose
        kill -CONT "$pid" 2>/dev/null
        fail watchdog "not restarted within 300 s of SIGSTOP: $(unit_state) (was MainPID=$pid NRestarts=$restarts)"
        return
    fi
    local took=$((SECONDS - t0))
    if ! journalctl -u nodeagent --no-pager -o cat | grep -q 'Watchdog timeout'; then
        fail watchdog "restarted, but systemd logged no 'Watchdog timeout': $(unit_state)"
        return
    fi
    if kill -0 "$pid" 2>/dev/null; then
        fail watchdog "restarted, but the hung process $pid is still there"
        return
    fi
    if ! wait_for 60 kernel_matches "$FEED_PEERS"; then
        fail watchdog "restarted, but the kernel's peers are not the feed's: $(peer_diff "$FEED_PEERS" | tail -n 1)"
        return
    fi
    local how
    how=$(journalctl -u nodeagent --no-pager -o cat |
        grep -E 'Watchdog timeout|Killing process|Main process exited|Failed with result' | paste -sd';')
    pass watchdog "WatchdogSec=$sec: restarted $took s after SIGSTOP, new MainPID, active again, the feed's peers in place; $(unit_state); systemd: $how"
}

# --- 5. systemctl stop leaves every peer in place ----------------------------------------------
check_stop() {
    needs stop start || return
    local before
    before=$(kernel_peers)
    if [[ -z $before ]] || ! kernel_matches "$FEED_PEERS"; then
        fail stop "not run: before the stop the kernel does not hold the feed's peers: $(peer_diff "$FEED_PEERS" | tail -n 1)"
        return
    fi
    local t0=$SECONDS out rc
    out=$(systemctl stop nodeagent 2>&1)
    rc=$?
    local took=$((SECONDS - t0))
    say "stopped in $took s: $(unit_state)"
    if ((rc != 0)); then
        fail stop "systemctl stop nodeagent exit $rc: $out"
    elif [[ $(prop ActiveState) != inactive ]]; then
        fail stop "after stop: $(unit_state)"
    elif ! ip link show dev "$IF" >/dev/null 2>&1; then
        fail stop "the link $IF is gone after the stop"
    elif ! kernel_matches "$FEED_PEERS"; then
        fail stop "after the stop: $(peer_diff "$FEED_PEERS" | tail -n 1)"
    elif sleep 3 && ! kernel_matches "$FEED_PEERS"; then
        fail stop "3 s after the stop: $(peer_diff "$FEED_PEERS" | tail -n 1)"
    else
        pass stop "stopped in ${took} s (Result=$(prop Result)); $IF keeps all $(wc -l <"$FEED_PEERS") peers with their allowed IPs"
    fi
}

# --- 7. the journal holds no client value ----------------------------------------------------
check_journal() {
    needs journal start || return
    journalctl --sync 2>/dev/null
    journalctl -u nodeagent.service -o cat --no-pager >"$WORK/journal" 2>&1
    local problems=() key hex n=0
    # Every public key any feed held (base64, also without its padding, and hex),
    # the interface's own private key, and the clients' allowed IPs.
    cat "$WORK/peers1" "$WORK/peers2" "$WORK/upeers" 2>/dev/null | awk '{ print $1 }' | sort -u >"$WORK/keys"
    cat "$ETC/$IF.key" >>"$WORK/keys"
    while read -r key; do
        n=$((n + 1))
        hex=$(printf '%s' "$key" | base64 -d | od -An -tx1 -v | tr -d ' \n')
        if grep -qF -e "${key%=}" "$WORK/journal" || grep -qiF -e "$hex" "$WORK/journal"; then
            problems+=("a key from the feed or the key file is in the journal")
        fi
    done <"$WORK/keys"
    if grep -qF -e 10.66.7. -e fd00:66:7: "$WORK/journal"; then
        problems+=("a client's allowed IP is in the journal: $(grep -F -e 10.66.7. -e fd00:66:7: "$WORK/journal" | head -n 1)")
    fi
    local started
    started=$(grep -c 'agent started' "$WORK/journal")
    ((started >= 1)) || problems+=("no 'agent started' line: the journal check read nothing of the agent's")
    grep -q 'Traceback' "$WORK/journal" && problems+=("a traceback in the journal")
    say "--- journalctl -u nodeagent -o cat"
    cat "$WORK/journal"
    if ((${#problems[@]})); then
        fail journal "$(printf '%s; ' "${problems[@]}" | head -c 1500)"
    else
        pass journal "$(wc -l <"$WORK/journal") lines, $started 'agent started'; none of $n keys (base64, hex) nor any client allowed IP"
    fi
}

say "system tier checks start at uptime $T_LAST s; $(uname -r); systemd $(systemctl --version | head -n 1 | awk '{ print $2 }')"
say "system state: $(systemctl is-system-running 2>&1)"
check_install
timing install
check_config
check_start
timing start
check_peers
timing peers
check_reload
timing reload
check_sandbox
timing sandbox
check_userspace
timing userspace
check_watchdog
timing watchdog
check_stop
timing stop
check_journal
timing journal
echo DONE >&3
say "done; powering off"
