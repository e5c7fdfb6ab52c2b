#!/usr/bin/env bash
# real-agent.sh - drive a REAL Puppet 7 agent (Debian bookworm `puppet-agent`)
# against an HTTPS report receiver on loopback, over mutual TLS, with a
# self-generated CA.  No puppetserver needed.  Idempotent / rerunnable.
#
# Usage:  real-agent.sh [RUN...]
#   RUN is any of: certs failed changed noop resource-failure http job all
#   default: all  (= failed changed noop resource-failure http)
#   job       a changed run with --job_id $REPORTD_JOB_ID (default 4711)
#   certs     only create/refresh the PKI and print the paths, run nothing
# check-real-agent.sh starts a reportd with these certificates and runs this.
#
# Environment:
#   REPORTD_PORT       port of the server under test (required unless `certs`)
#   REPORTD_URL_HOST   host the agent connects to (default 127.0.0.1); must be
#                      in the server cert's SAN (checked, cert re-issued if not)
#   REPORTD_PKI_DIR    where CA / server / client certs+keys live (default
#                      <script dir>/pki); created if missing, reused otherwise
#   REPORTD_CERTNAME   agent certname (default agent01.example.test)
#   REPORTD_HTTP_PATH  path for the `http` report processor (default /reports/upload)
#   REPORTD_HTTP_URL   full reporturl, overrides host/port/path for `http`
#   REPORTD_STATE_DIR  private puppet conf/var/ssl/... tree (default <script dir>/state)
#   REPORTD_CLOSED_PORT  a loopback port nobody listens on, used as the
#                      puppetserver port so catalog retrieval fails fast (default 1)
#   REPORTD_REVOCATION chain (default; uses our crl.pem) | leaf | false
#   REPORTD_RUN_TIMEOUT seconds per puppet run (default 180)
#   PUPPET             puppet binary (default: puppet)
#
# Exit status: 0 if every run delivered its report and got a 2xx; 1 otherwise.
set -euo pipefail

LAB="${REPORTD_LAB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.lab}"
HOST="${REPORTD_URL_HOST:-127.0.0.1}"
PORT="${REPORTD_PORT:-}"
PKI="${REPORTD_PKI_DIR:-$LAB/pki}"
CERTNAME="${REPORTD_CERTNAME:-agent01.example.test}"
HTTP_PATH="${REPORTD_HTTP_PATH:-/reports/upload}"
STATE="${REPORTD_STATE_DIR:-$LAB/state}"
CLOSED_PORT="${REPORTD_CLOSED_PORT:-1}"
REVOCATION="${REPORTD_REVOCATION:-chain}"
RUN_TIMEOUT="${REPORTD_RUN_TIMEOUT:-180}"
PUPPET="${PUPPET:-puppet}"

log()  { printf '[real-agent] %s\n' "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }

# --------------------------------------------------------------------- PKI --
is_ip() { [[ "$1" =~ ^[0-9]+(\.[0-9]+){3}$ || "$1" == *:* ]]; }

server_san() {
  local san="IP:127.0.0.1,IP:::1,DNS:localhost"
  if [[ "$HOST" != 127.0.0.1 && "$HOST" != localhost && "$HOST" != ::1 ]]; then
    if is_ip "$HOST"; then san+=",IP:$HOST"; else san+=",DNS:$HOST"; fi
  fi
  echo "$san"
}

# sign CSR $1 -> cert $2 with extension file $3
ca_sign() {
  openssl x509 -req -in "$1" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 825 -sha256 \
    -extfile "$3" -out "$2.tmp" 2>/dev/null
  mv -f "$2.tmp" "$2"
}

host_ok() {  # does server.pem cover $HOST?
  if is_ip "$HOST"; then
    openssl x509 -in "$PKI/server.pem" -noout -checkip "$HOST" | grep -q ' does match'
  else
    openssl x509 -in "$PKI/server.pem" -noout -checkhost "$HOST" | grep -q ' does match'
  fi
}

ensure_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  exec 9>"$PKI/.lock"; flock 9
  local t; t="$(mktemp -d)"; trap 'rm -rf "$t"' RETURN

  if [[ ! -s "$PKI/ca.pem" || ! -s "$PKI/ca.key" ]] || ! openssl x509 -in "$PKI/ca.pem" -noout -checkend 2592000 >/dev/null; then
    log "generating CA in $PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -subj "/CN=reportd-lab-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
    rm -f "$PKI"/server.pem "$PKI"/client.pem "$PKI"/crl.pem "$PKI"/index.txt "$PKI"/crlnumber
  fi

  # server cert: SAN IP:127.0.0.1, IP:::1, DNS:localhost (+ $HOST)
  if [[ ! -s "$PKI/server.pem" || ! -s "$PKI/server.key" ]] \
     || ! openssl verify -CAfile "$PKI/ca.pem" "$PKI/server.pem" >/dev/null 2>&1 \
     || ! openssl x509 -in "$PKI/server.pem" -noout -checkend 86400 >/dev/null \
     || ! host_ok; then
    log "issuing server cert (SAN $(server_san))"
    cat >"$t/srv.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=$(server_san)
EOF
    openssl req -newkey rsa:2048 -nodes -keyout "$t/server.key" -out "$t/server.csr" -subj "/CN=localhost" 2>/dev/null
    ca_sign "$t/server.csr" "$t/server.pem" "$t/srv.ext"
    install -m 600 "$t/server.key" "$PKI/server.key"; install -m 644 "$t/server.pem" "$PKI/server.pem"
    log "NOTE: server cert (re)issued - restart the server under test if it was already running"
  fi

  # client cert for the agent: CN=SAN=$CERTNAME, EKU clientAuth+serverAuth (like Puppet CA)
  if [[ ! -s "$PKI/client.pem" || ! -s "$PKI/client.key" ]] \
     || ! openssl verify -CAfile "$PKI/ca.pem" "$PKI/client.pem" >/dev/null 2>&1 \
     || ! openssl x509 -in "$PKI/client.pem" -noout -checkend 86400 >/dev/null \
     || ! openssl x509 -in "$PKI/client.pem" -noout -subject -nameopt RFC2253 | grep -qx "subject=CN=$CERTNAME"; then
    log "issuing client cert CN=$CERTNAME"
    cat >"$t/cli.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth,serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName=DNS:$CERTNAME
EOF
    openssl req -newkey rsa:2048 -nodes -keyout "$t/client.key" -out "$t/client.csr" -subj "/CN=$CERTNAME" 2>/dev/null
    ca_sign "$t/client.csr" "$t/client.pem" "$t/cli.ext"
    install -m 600 "$t/client.key" "$PKI/client.key"; install -m 644 "$t/client.pem" "$PKI/client.pem"
  fi

  # empty CRL signed by the CA (lets Puppet keep certificate_revocation=chain offline)
  if [[ ! -s "$PKI/crl.pem" ]] || ! openssl verify -crl_check -CRLfile "$PKI/crl.pem" -CAfile "$PKI/ca.pem" "$PKI/client.pem" >/dev/null 2>&1; then
    log "generating CRL"
    : >"$PKI/index.txt"; echo 01 >"$PKI/crlnumber"
    cat >"$t/ca.cnf" <<EOF
[ ca ]
default_ca = CA_default
[ CA_default ]
database = $PKI/index.txt
crlnumber = $PKI/crlnumber
default_md = sha256
default_crl_days = 3650
crl_extensions = crl_ext
[ crl_ext ]
authorityKeyIdentifier=keyid:always
EOF
    openssl ca -gencrl -config "$t/ca.cnf" -keyfile "$PKI/ca.key" -cert "$PKI/ca.pem" -out "$PKI/crl.pem.tmp" 2>/dev/null
    mv -f "$PKI/crl.pem.tmp" "$PKI/crl.pem"
  fi
  chmod 600 "$PKI/ca.key"
  flock -u 9

  cat <<EOF
# PKI for the server under test (dir: $PKI)
tls_cert=$PKI/server.pem
tls_key=$PKI/server.key
tls_ca=$PKI/ca.pem
# agent side (copied into $STATE/ssl): client_cert=$PKI/client.pem client_key=$PKI/client.key crl=$PKI/crl.pem certname=$CERTNAME
EOF
}

# ------------------------------------------------------- puppet state tree --
# Puppet 7 needs exactly: ssldir/certs/ca.pem, ssldir/certs/<certname>.pem,
# ssldir/private_keys/<certname>.pem, and ssldir/crl.pem unless
# certificate_revocation=false.  (public_keys/ is not needed.)
sync_ssldir() {
  mkdir -p "$STATE"/{etc,code,var,ssl,log,run,public,managed}
  mkdir -p "$STATE/ssl/certs" "$STATE/ssl/private_keys"
  install -m 644 "$PKI/ca.pem"     "$STATE/ssl/certs/ca.pem"
  install -m 644 "$PKI/client.pem" "$STATE/ssl/certs/$CERTNAME.pem"
  install -m 640 "$PKI/client.key" "$STATE/ssl/private_keys/$CERTNAME.pem"
  install -m 644 "$PKI/crl.pem"    "$STATE/ssl/crl.pem"
  : >"$STATE/etc/puppet.conf"   # empty on purpose: everything is on the command line
}

# dirs + TLS settings shared by every run (private tree, nothing global touched)
common_args() {
  COMMON=(
    --confdir="$STATE/etc" --vardir="$STATE/var" --ssldir="$STATE/ssl"
    --codedir="$STATE/code" --logdir="$STATE/log" --rundir="$STATE/run"
    --publicdir="$STATE/public"
    --certname="$CERTNAME"
    --certificate_revocation="$REVOCATION"
    --http_connect_timeout=10s --http_read_timeout=60s
    --http_debug          # wire trace on stderr (not in the report) -> lets us see the answer status
    --verbose --color=false
  )
  AGENT=(
    agent --onetime --no-daemonize --no-splay --detailed-exitcodes
    --server=127.0.0.1 --serverport="$CLOSED_PORT"     # "puppetserver": nothing listens here
    --report_server="$HOST" --report_port="$PORT"      # the server under test
  )
}

# $1=file  $2=with_exec(0/1)
write_catalog() {
  local f="$1" with_exec="$2" managed="$STATE/managed/managed.txt" now
  now="$(date +%s)"
  mkdir -p "$(dirname "$f")"
  {
    cat <<EOF
{
  "tags": ["settings"],
  "name": "$CERTNAME",
  "version": $now,
  "code_id": null,
  "catalog_uuid": "$(cat /proc/sys/kernel/random/uuid)",
  "catalog_format": 1,
  "environment": "production",
  "resources": [
    {"type": "Stage", "title": "main", "tags": ["stage"], "exported": false, "parameters": {"name": "main"}},
    {"type": "Class", "title": "Settings", "tags": ["class", "settings"], "exported": false},
    {"type": "Class", "title": "main", "tags": ["class"], "exported": false, "parameters": {"name": "main"}},
    {"type": "Notify", "title": "reportd-lab", "tags": ["notify", "class"], "file": "/lab/site.pp", "line": 1, "exported": false,
     "parameters": {"message": "hello from reportd lab"}},
    {"type": "File", "title": "$managed", "tags": ["file", "class"], "file": "/lab/site.pp", "line": 2, "exported": false,
     "parameters": {"ensure": "file", "content": "managed by real-agent.sh at $now.$RANDOM\n", "mode": "0644", "backup": false}}$( ((with_exec)) && printf ',
    {"type": "Exec", "title": "always-fails", "tags": ["exec", "class"], "file": "/lab/site.pp", "line": 3, "exported": false,
     "parameters": {"command": "/bin/false"}}')
  ],
  "edges": [
    {"source": "Stage[main]", "target": "Class[Settings]"},
    {"source": "Stage[main]", "target": "Class[Main]"},
    {"source": "Class[Main]", "target": "Notify[reportd-lab]"},
    {"source": "Class[Main]", "target": "File[$managed]"}$( ((with_exec)) && printf ',
    {"source": "Class[Main]", "target": "Exec[always-fails]"}')
  ],
  "classes": ["settings"]
}
EOF
  } >"$f.tmp"
  mv -f "$f.tmp" "$f"
}

FAILURES=()
SUMMARY=()

# $1=name $2=request line regex (http_debug trace) $3=expected report status ; rest = puppet args
run_puppet() {
  local name="$1" req_re="$2" want="$3"; shift 3
  local logf="$STATE/log/run-$name.log" rc t0 t1 secs status="?" answer="none" bad=""
  log "run '$name': $PUPPET $*"
  rm -f "$STATE/var/state/last_run_report.yaml"
  t0=$(date +%s.%N)
  set +e
  timeout "$RUN_TIMEOUT" "$PUPPET" "$@" >"$logf" 2>&1
  rc=$?
  set -e
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  # status line of the HTTP answer to our report request (from --http_debug trace)
  answer=$(awk -v re="$req_re" 'index($0,"<- \"")==1 && $0 ~ re {f=1; next}
                                f && index($0,"-> \"HTTP/")==1 {sub(/^-> "/,""); sub(/\\r\\n"$/,""); print; exit}' "$logf")
  [[ -n "$answer" ]] || answer="none"
  [[ -f "$STATE/var/state/last_run_report.yaml" ]] && status=$(awk '/^status:/{print $2; exit}' "$STATE/var/state/last_run_report.yaml")
  # The agent logs these (exit code is NOT reliable: 404 is silently accepted, http processor errors exit 0)
  bad=$(grep -aE 'Could not send report|Unable to submit report|Report processor failed|Could not run:|Failed to initialize SSL|No more routes to report|certificate verify failed|does not match the server certificate|Could not retrieve catalog from cache' "$logf" || true)
  if (( rc == 124 )); then bad+=$'\n'"timed out after ${RUN_TIMEOUT}s"; fi
  if [[ "$status" != "$want" ]]; then bad+=$'\n'"report status '$status', expected '$want' (scenario did not play out)"; fi
  if [[ ! "$answer" =~ ^HTTP/1\.[01]\ 2[0-9][0-9] ]]; then bad+=$'\n'"no 2xx answer to the report request (got: $answer)"; fi
  SUMMARY+=("$(printf '%-17s %5ss rc=%-3s report_status=%-9s answer=%s' "$name" "$secs" "$rc" "$status" "$answer")")
  if [[ -n "${bad//[$'\n ']/}" ]]; then
    FAILURES+=("$name")
    log "run '$name' FAILED (log: $logf):"; printf '%s\n' "$bad" | sed '/^$/d; s/^/    /' >&2
  fi
}

run_failed() {  # Path B(a): no catalog -> status=failed report PUT to report_server
  rm -f "$STATE/var/client_data/catalog/$CERTNAME.json"   # else usecacheonfailure would apply it
  run_puppet failed "PUT /puppet/v3/report/" failed "${AGENT[@]}" "${COMMON[@]}" --no-usecacheonfailure
  grep -q 'Could not retrieve catalog; skipping run' "$STATE/log/run-failed.log" \
    || { FAILURES+=("failed(scenario)"); log "run 'failed': expected catalog retrieval failure not seen"; }
}

run_cached() {  # Path B(b): hand-written cached catalog, nothing fetched from a server
  local name="$1" with_exec="$2" want="$3"; shift 3
  write_catalog "$STATE/var/client_data/catalog/$CERTNAME.json" "$with_exec"
  run_puppet "$name" "PUT /puppet/v3/report/" "$want" "${AGENT[@]}" "${COMMON[@]}" --use_cached_catalog --no-usecacheonfailure "$@"
}

run_http() {  # Path A: `http` report processor, POST YAML to reporturl
  local url="${REPORTD_HTTP_URL:-https://$HOST:$PORT$HTTP_PATH}" path
  path="/${url#*://*/}"
  run_puppet http "POST ${path%%\?*}" changed apply "${COMMON[@]}" --reports=http --reporturl="$url" \
    -e "notify { 'reportd-lab http processor': } file { '$STATE/managed/http.txt': content => \"$(date +%s).\${facts['os']['family']}\n\" }"
}

run_all() {
  run_failed
  run_cached changed 0 changed
  run_cached noop 0 unchanged --noop
  run_cached resource-failure 1 failed
  run_http
}

# ------------------------------------------------------------------- main --
command -v "$PUPPET" >/dev/null || die "puppet not found (apt-get update && apt-get install -y puppet-agent)"
(( $# )) || set -- all
ensure_pki
[[ " $* " == " certs " ]] && exit 0
[[ -n "$PORT" ]] || die "REPORTD_PORT is required"
sync_ssldir
common_args
for what in "$@"; do
  case "$what" in
    certs) ;;
    all) run_all ;;
    failed) run_failed ;;
    changed) run_cached changed 0 changed ;;
    noop) run_cached noop 0 unchanged --noop ;;
    resource-failure) run_cached resource-failure 1 failed ;;
    http) run_http ;;
    job) run_cached job 0 changed --job_id "${REPORTD_JOB_ID:-4711}" ;;  # an orchestrator-style job's run
    *) die "unknown run '$what'" ;;
  esac
done

log "summary (target https://$HOST:$PORT, certname $CERTNAME, logs in $STATE/log):"
printf '  %s\n' "${SUMMARY[@]}" >&2
if (( ${#FAILURES[@]} )); then log "FAILED: ${FAILURES[*]}"; exit 1; fi
log "all report submissions succeeded"
