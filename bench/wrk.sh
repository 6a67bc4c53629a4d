#!/usr/bin/env bash
# The router against nginx's request mirroring, measured the way the
# hot-path work was first measured: wrk (POST, a 100-byte JSON body) over
# nginx pods on loopback addresses, everything on this machine.
#
# Usage: bash bench/wrk.sh [--pods "3 10"] [--duration 10s] [--realtime] ROUTER...
#
# For each pod count P (1 to 250) it starts P nginx pods (one nginx, one
# worker, listening on 127.0.20.1…P:18080, answering {"ok":true}), then
# measures:
# - one pod directly, with 32 connections (what a pod takes: P pods take
#   at most that ÷ P broadcasts a second, the loopback limit);
# - with 32 connections (throughput) and then with 1 (unloaded latency):
# - nginx mirroring (2 workers, keep-alive upstreams; the main request to
#   pod 1, a `mirror` subrequest to each other pod), a stock C proxy
#   sending the same copies. It answers with pod 1's answer as soon as
#   that arrives, without waiting for the mirrors' (it still holds the
#   client's connection until they finish), where the router's `all`
#   waits for every pod and writes a report;
# - every ROUTER binary given (`serve` on a static route over the P pods,
#   policy `all`, info logs as JSON to a file), with its CPU time per
#   broadcast from /proc.
# --realtime runs wrk, nginx and the routers under SCHED_RR (needs root),
# as the harness's --realtime does. Installs wrk and nginx (Debian) when
# missing. Results: a markdown table on stdout and in
# bench/results/wrk-<time>.md.
set -euo pipefail
export LC_ALL=C

pods_list="3 10"
duration=10s
rt=()
routers=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pods) pods_list="$2"; shift 2 ;;
        --duration) duration="${2%s}s"; shift 2 ;;
        --realtime) rt=(chrt -r 10); shift ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) routers+=("$(realpath "$1")"); shift ;;
    esac
done
[[ ${#routers[@]} -gt 0 ]] || { echo "usage: bash bench/wrk.sh [--pods \"3 10\"] [--duration 10s] [--realtime] ROUTER..." >&2; exit 2; }
[[ "$duration" =~ ^[1-9][0-9]*s$ ]] || { echo "--duration takes whole seconds, e.g. 10s" >&2; exit 2; }
for pods in $pods_list; do
    [[ "$pods" =~ ^[0-9]+$ && "$pods" -ge 1 && "$pods" -le 250 ]] \
        || { echo "--pods takes counts from 1 to 250, separated by spaces" >&2; exit 2; }
done
# Router paths are resolved above, from where the script was started.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
[[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

work=$(mktemp -d)
router_pid=
cleanup() {
    [[ -n "$router_pid" ]] && kill "$router_pid" 2>/dev/null || true
    for conf in "$work"/*.conf; do
        [[ -e "$conf" ]] && stop_nginx "$conf"
    done
    rm -rf "$work"
}
stop_nginx() { /usr/sbin/nginx -c "$1" -s stop 2>/dev/null || true; }
trap cleanup EXIT

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"op":"purge","key":"' .. string.rep("k", 72) .. '"}'
wrk.headers["Content-Type"] = "application/json"
EOF

pod_addr() { echo "127.0.20.$1:18080"; }

nginx_conf() { # name workers body
    cat >"$work/$1.conf" <<EOF
worker_processes $2;
daemon on;
pid $work/$1.pid;
error_log $work/$1.err;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fastcgi;
  uwsgi_temp_path $work/$1-uwsgi;
  scgi_temp_path $work/$1-scgi;
  keepalive_requests 100000000;
  $3
}
EOF
    "${rt[@]}" /usr/sbin/nginx -c "$work/$1.conf"
}

ticks() { # utime+stime of a pid and its children (nginx workers)
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# wrk CONNECTIONS DURATION URL -> "req/s p50 p99"
measure() {
    local out
    out=$("${rt[@]}" wrk -t1 -c"$1" -d"$2" --latency -s "$work/post.lua" "$3")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "wrk reported errors against $3:" >&2
        echo "$out" >&2
        exit 1
    fi
    awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} END{print r, p50, p99}' <<<"$out"
}

commit=$(git rev-parse --short=10 HEAD)
[[ -z "$(git status --porcelain)" ]] || commit+="+dirty"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
# Written to the results folder only once every phase ran.
result="bench/results/wrk-$stamp.md"
out="$work/result.md"
clk=$(getconf CLK_TCK)
{
    echo "# Router against nginx mirroring, wrk over nginx pods"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit \`$commit\`, $(nproc) cores shared by wrk, the pods and the proxy; wrk -t1, $duration per phase${rt:+; wrk, nginx and the routers under SCHED_RR}."
    echo
    echo '```sh'
    echo "bash bench/wrk.sh --pods \"$pods_list\" --duration $duration ${rt:+--realtime }${routers[*]}"
    echo '```'
    echo
    echo "| pods | proxy | broadcasts/s (32 conn.) | share of the loopback limit | p50 / p99 (32 conn.) | p50 / p99 (1 conn.) | proxy CPU µs per broadcast |"
    echo "|---:|---|---:|---:|---|---|---:|"
} | tee "$out"

row() { # name url pid: one table row (uses $pods, $direct)
    local before after r p50 p99 r1 p501 p991
    before=$(ticks "$3")
    read -r r p50 p99 < <(measure 32 "$duration" "$2")
    after=$(ticks "$3")
    read -r r1 p501 p991 < <(measure 1 "$duration" "$2")
    awk -v p="$pods" -v n="$1" -v r="$r" -v d="$direct" -v a="$p50" -v b="$p99" -v c="$p501" -v e="$p991" \
        -v t="$((after - before))" -v clk="$clk" -v dur="${duration%s}" \
        'BEGIN { printf "| %d | %s | %.0f | %.0f%% | %s / %s | %s / %s | %.0f |\n", p, n, r, 100*r*p/d, a, b, c, e, 1e6*t/clk/(r*dur) }' \
        | tee -a "$out"
}

for pods in $pods_list; do
    listens=""
    for i in $(seq 1 "$pods"); do listens+="listen $(pod_addr "$i"); "; done
    nginx_conf "pods$pods" 1 "server { $listens location / { return 200 '{\"ok\":true}'; } }"

    upstreams="" mirrors="" locations=""
    for i in $(seq 1 "$pods"); do
        upstreams+="upstream p$i { server $(pod_addr "$i"); keepalive 64; } "
        if [[ $i -gt 1 ]]; then
            mirrors+="mirror /m$i; "
            locations+="location = /m$i { internal; proxy_pass http://p$i\$request_uri; } "
        fi
    done
    nginx_conf "mirror$pods" 2 "$upstreams server { listen 127.0.0.1:18081; proxy_http_version 1.1; proxy_set_header Connection \"\"; location /bench { $mirrors proxy_pass http://p1; } $locations }"
    sleep 0.5

    read -r direct direct_p50 direct_p99 < <(measure 32 "$duration" "http://$(pod_addr 1)/bench")
    printf '| %d | one pod directly | %.0f requests/s | | %s / %s | | |\n' "$pods" "$direct" "$direct_p50" "$direct_p99" | tee -a "$out"
    row "nginx mirroring" "http://127.0.0.1:18081/bench" "$(cat "$work/mirror$pods.pid")"
    stop_nginx "$work/mirror$pods.conf"

    for router in "${routers[@]}"; do
        cat >"$work/router.toml" <<EOF
[server]
listen = "127.0.0.1:18082"
admin_listen = "127.0.0.1:18083"

[[routes]]
name = "bench"
path = "/bench"
policy = "all"
targets = [$(for i in $(seq 1 "$pods"); do printf '"%s", ' "$(pod_addr "$i")"; done)]
EOF
        "${rt[@]}" "$router" --log-format json serve --config "$work/router.toml" 2>"$work/router.log" &
        router_pid=$!
        ready=
        for _ in $(seq 1 50); do
            curl -sf -o /dev/null -X POST http://127.0.0.1:18082/bench && { ready=1; break; }
            kill -0 "$router_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [[ -z "$ready" ]]; then
            echo "$router did not answer a broadcast within 5 s; its log:" >&2
            cat "$work/router.log" >&2
            exit 1
        fi
        row "\`$router\`" "http://127.0.0.1:18082/bench" "$router_pid"
        kill "$router_pid"
        wait "$router_pid" || true
        router_pid=
    done
    stop_nginx "$work/pods$pods.conf"
    sleep 0.5
done
cp "$out" "$result"
echo
echo "wrote $result"
