#!/usr/bin/env bash
# Durable write throughput and latency of a 3-member etcd cluster and of
# Cairn (replication 3), on this machine, in the same run, with the same
# client count. Installs etcd-server and wrk from Debian if they are missing.
#
#   bench/compare/etcd.sh [CLIENTS] [SECONDS]
#
# etcd: wrk with CLIENTS connections posting 100-byte puts to the leader's
# v3 JSON gateway (every put is fsynced on a majority, as in Cairn).
# Cairn: `cairn bench --workload w` (100 % YCSB updates of one 100-byte
# field), embedded three-node cluster, CLIENTS clients.
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${1:-64}
seconds=${2:-10}
if ! command -v etcd >/dev/null || ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client wrk >/dev/null
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cluster="e0=http://127.0.0.1:23800,e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802"
for i in 0 1 2; do
  etcd --name "e$i" --data-dir "$work/e$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
    >"$work/e$i.log" 2>&1 &
done
endpoints="127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792"
for _ in $(seq 1 100); do
  if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then break; fi
  sleep 0.2
done
leader=$(ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint status -w simple | awk -F', ' '$5 == "true" {print $1}')
echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members on loopback, leader $leader, $clients connections, ${seconds} s"
wrk -t2 -c"$clients" -d"${seconds}s" --latency -s bench/compare/etcd-put.lua "http://$leader" |
  grep -E "Latency|50%|90%|99%|Requests/sec|requests in|Non-2xx"
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true
echo
echo "== cairn: replication 3, workload W (updates only), $clients clients, ${seconds} s"
cargo run --quiet --release --bin cairn -- bench --workload w --clients "$clients" \
  --duration-s "$seconds" --records 100000 | grep -E "target|run:|operation|update"
