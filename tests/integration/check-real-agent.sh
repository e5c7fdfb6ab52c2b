#!/usr/bin/env bash
# check-real-agent.sh - a real Puppet 7 agent against a real reportd, over mutual TLS.
#
# Needs Debian's puppet-agent (apt-get update && apt-get install -y puppet-agent)
# and reportd installed (make run / make test create .venv). It makes a CA and
# certificates, starts `reportd serve` with TLS, client certificates required
# for uploads (no anonymous networks), runs real-agent.sh's five agent runs
# (failed catalog, changed, noop, failing resource: PUT /puppet/v3/report/...;
# puppet apply with the http report processor: POST /reports/upload) and one
# run with --job_id 4711, then checks through the API that reportd stored each
# with the right status and that the job-id run made job 4711, finished.
#
# Usage: tests/integration/check-real-agent.sh   (exit 0: all good)
# Environment: REPORTD (the reportd command, default .venv/bin/reportd),
# REPORTD_PORT (default 18143), KEEP=1 to keep the work directory.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REPORTD="${REPORTD:-$ROOT/.venv/bin/reportd}"
PORT="${REPORTD_PORT:-18143}"
WORK="$(mktemp -d /tmp/reportd-real-agent.XXXXXX)"
CERTNAME=agent01.example.test
export REPORTD_LAB_DIR="$WORK" REPORTD_PKI_DIR="$WORK/pki" REPORTD_STATE_DIR="$WORK/state" REPORTD_PORT="$PORT"
export REPORTD_CERTNAME="$CERTNAME"

say() { printf '[check-real-agent] %s\n' "$*" >&2; }
cleanup() {
  [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [[ "${KEEP:-}" == 1 ]] && say "work directory kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

"$HERE/real-agent.sh" certs >/dev/null
cat >"$WORK/reportd.ini" <<INI
[reportd]
listen = 127.0.0.1:$PORT
data_dir = $WORK/data
tls_cert = $WORK/pki/server.pem
tls_key = $WORK/pki/server.key
tls_ca = $WORK/pki/ca.pem
anonymous_networks =
INI
"$REPORTD" --config "$WORK/reportd.ini" check-config >&2
"$REPORTD" --config "$WORK/reportd.ini" serve >"$WORK/reportd.log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q '"listening"' "$WORK/reportd.log" && break; sleep 0.1; done
grep -q '"listening"' "$WORK/reportd.log" || { cat "$WORK/reportd.log" >&2; exit 1; }

"$HERE/real-agent.sh" all job

TOKEN="$("$REPORTD" --config "$WORK/reportd.ini" token create checker -p view_reports -p view_jobs)"
for _ in $(seq 50); do
  pending=$(curl -sf --cacert "$WORK/pki/ca.pem" -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$PORT/api/v1/queue" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processors"]["store"]["pending"])')
  [[ "$pending" == 0 ]] && break; sleep 0.1
done
curl -sf --cacert "$WORK/pki/ca.pem" -H "Authorization: Bearer $TOKEN" \
  "https://127.0.0.1:$PORT/api/v1/reports?certname=$CERTNAME" >"$WORK/reports.json"
python3 - "$WORK/reports.json" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
got = sorted((i["received_at"], i["status"], i["summary"]["agent_status"]) for i in items)
statuses = [status for _, status, _ in got]
print("stored, in arrival order:", statuses, file=sys.stderr)
# failed catalog, changed, noop, failing resource, http processor (puppet apply), --job_id 4711
expected = ["failed", "changed", "noop_pending", "failed", "changed", "changed"]
sys.exit(0 if statuses == expected else f"expected {expected}, got {statuses}")
PY
# the --job_id run made job 4711 (reportd did not know it) and finished it
for _ in $(seq 50); do
  curl -sf --cacert "$WORK/pki/ca.pem" -H "X-Authentication: $TOKEN" \
    "https://127.0.0.1:$PORT/orchestrator/v1/jobs/4711/nodes" >"$WORK/job-nodes.json" 2>/dev/null \
    && grep -q '"state":"finished"' "$WORK/job-nodes.json" && break
  sleep 0.1
done
curl -sf --cacert "$WORK/pki/ca.pem" -H "X-Authentication: $TOKEN" \
  "https://127.0.0.1:$PORT/orchestrator/v1/jobs/4711" >"$WORK/job.json"
python3 - "$WORK/job.json" "$WORK/job-nodes.json" "$WORK/reports.json" "$CERTNAME" "$PORT" <<'PY'
import json, sys
job, nodes, reports = (json.load(open(path)) for path in sys.argv[1:4])
certname, port = sys.argv[4], sys.argv[5]
(node,) = nodes["items"]
(report,) = [r for r in reports["items"] if r["job_id"] == "4711"]
problems = [
    what for what, ok in [
        ("job state", job["state"] == "finished"),
        ("owner", job["owner"] == {"id": "unknown", "login": "unknown"}),
        ("node_count", job["node_count"] == 1),
        ("node", (node["name"], node["state"]) == (certname, "finished")),
        ("transaction_uuid", node["transaction_uuid"] == report["transaction_uuid"]),
        ("report-url", node["details"]["report-url"] == f"https://127.0.0.1:{port}/api/v1/reports/{report['id']}"),
        ("message", node["details"]["message"] == f"Finished puppet run on {certname} - Success!"),
    ] if not ok
]
print(f"job 4711: {job['state']}, node {node['name']} {node['state']}", file=sys.stderr)
sys.exit(f"job 4711 wrong: {problems}: {job} {nodes}" if problems else 0)
PY
say "reportd accepted $(grep -c '"report_accepted"' "$WORK/reportd.log") reports over mutual TLS"
kill "$PID"; wait "$PID"; PID=
say "OK: reportd exited 0 on SIGTERM"
