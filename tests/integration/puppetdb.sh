#!/usr/bin/env bash
# puppetdb.sh - a REAL PuppetDB (Debian bookworm `puppetdb` 7.12) on loopback,
# plain HTTP, for reportd's forwarding checks.  Idempotent / rerunnable.
#
# Usage:  puppetdb.sh install|start|stop|status|reset|url
#   install  apt-get install puppetdb if missing; create the PostgreSQL role and
#            database (with pg_trgm) if missing; write the private config
#   start    install if needed, start PuppetDB in the background, wait until
#            /status/v1/services/puppetdb-status says "running" (exit 1 on
#            timeout); prints the seconds it took and the URL
#   stop     stop it (TERM, then KILL after 60 s)
#   status   print state; exit 0 if running, 3 if not
#   reset    stop if running, drop and recreate the database, empty the vardir
#            (command queue and discard folder); restart if it was running
#   url      print the base URL
# Then:   export REPORTD_TEST_PUPPETDB_URL=http://127.0.0.1:8080
#
# Environment:
#   REPORTD_PUPPETDB_PORT       plain-HTTP port on 127.0.0.1 (default 8080); no SSL port
#   REPORTD_PUPPETDB_ADMIN_DSN  libpq DSN of a PostgreSQL superuser
#                               (default postgresql://postgres@127.0.0.1:5432/postgres)
#   REPORTD_PUPPETDB_PG_HOST / _PG_PORT  where PuppetDB connects (default: the
#                               server the admin DSN reached, else 127.0.0.1:5432)
#   REPORTD_PUPPETDB_DB         database name (default puppetdb)
#   REPORTD_PUPPETDB_DB_USER    role (default puppetdb), _DB_PASSWORD (default puppetdb)
#   REPORTD_PUPPETDB_DIR        private state (default /var/tmp/reportd-puppetdb):
#                               conf.d/, log/ (puppetdb.log, access.log, stdout.log),
#                               puppetdb.pid, var/ = PuppetDB's vardir:
#                                 var/stockpile/discard/  dead letters: commands that
#                                   failed for good (<id>-<recv ms><+/-offset>_report_8_
#                                   <certname>.json[.gz] + ..._err.txt with the reason)
#                                 var/stockpile/cmd/q/    queued commands, including ones
#                                   waiting to be retried (retried after 60 min, 5 times,
#                                   and once more at every start)
#   REPORTD_PUPPETDB_JAVA_ARGS  JVM flags (default "-Xmx512m -Xms128m -XX:+UseSerialGC
#                               -XX:TieredStopAtLevel=1": ~24 s to start, ~380 MB RSS;
#                               without the last two ~30 s and ~550 MB)
#   REPORTD_PUPPETDB_JAVA       java binary (default /usr/bin/java: Debian's
#                               OpenJDK 17, which the package is built for)
#   REPORTD_PUPPETDB_TIMEOUT    seconds `start` waits (default 180)
#
# What it changes outside REPORTD_PUPPETDB_DIR: the Debian package (apt-get
# installs puppetdb and its /etc/puppetdb, unused here; dbconfig-common is
# preseeded off so the package itself creates no role or database), and in
# PostgreSQL the role and database named above (the role's password is set to
# REPORTD_PUPPETDB_DB_PASSWORD).  The package's systemd unit and init script
# are not used; /etc/puppetdb is only read (bootstrap.cfg, auth.conf).
# PuppetDB runs as the invoking user (root here), not the `puppetdb` user.
set -euo pipefail

PORT="${REPORTD_PUPPETDB_PORT:-8080}"
ADMIN_DSN="${REPORTD_PUPPETDB_ADMIN_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}"
DB="${REPORTD_PUPPETDB_DB:-puppetdb}"
DB_USER="${REPORTD_PUPPETDB_DB_USER:-puppetdb}"
DB_PASSWORD="${REPORTD_PUPPETDB_DB_PASSWORD:-puppetdb}"
DIR="${REPORTD_PUPPETDB_DIR:-/var/tmp/reportd-puppetdb}"
JAVA_ARGS="${REPORTD_PUPPETDB_JAVA_ARGS:--Xmx512m -Xms128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
TIMEOUT="${REPORTD_PUPPETDB_TIMEOUT:-180}"
HOST=127.0.0.1
URL="http://$HOST:$PORT"
STATUS_URL="$URL/status/v1/services/puppetdb-status"
PIDFILE="$DIR/puppetdb.pid"
JAR=/usr/share/puppetdb/puppetdb.jar
JAVA="${REPORTD_PUPPETDB_JAVA:-/usr/bin/java}"

log() { printf '[puppetdb] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

psql_admin() { psql "$ADMIN_DSN" -v ON_ERROR_STOP=1 -qAtX "$@"; }
psql_db() {  # same server and credentials, database $DB
  psql "$ADMIN_DSN" -v ON_ERROR_STOP=1 -qAtX -c '\c '"$DB" "$@" 2>/dev/null ||
    psql "$(dsn_with_db "$DB")" -v ON_ERROR_STOP=1 -qAtX "$@"
}
dsn_with_db() {  # only used when \c fails; handles URI DSNs
  case "$ADMIN_DSN" in
    postgres://*|postgresql://*) local base="${ADMIN_DSN%%\?*}" q=""
      [[ "$ADMIN_DSN" == *\?* ]] && q="?${ADMIN_DSN#*\?}"
      local rest="${base#*://}"
      if [[ "$rest" == */* ]]; then echo "${base%/*}/$1$q"; else echo "$base/$1$q"; fi ;;
    *) echo "$ADMIN_DSN dbname=$1" ;;
  esac
}
sql_lit() { printf "'%s'" "${1//\'/\'\'}"; }
sql_id()  { printf '"%s"' "${1//\"/\"\"}"; }

pid_alive() {
  [[ -s "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

status_json() { curl -s -m 5 "$STATUS_URL" 2>/dev/null || true; }
is_running() { status_json | grep -q '"state" *: *"running"'; }

# ------------------------------------------------------------------ install --
install_pkg() {
  if dpkg-query -W -f='${Status}' puppetdb 2>/dev/null | grep -q 'install ok installed' &&
     [[ -f "$JAR" ]]; then
    return
  fi
  [[ "$(id -u)" == 0 ]] || die "puppetdb is not installed and we are not root"
  log "installing Debian package puppetdb"
  # keep dbconfig-common from creating its own role/db/config: we do that below
  echo 'puppetdb puppetdb/dbconfig-install boolean false' | debconf-set-selections
  if ! apt-cache policy puppetdb 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -q >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q puppetdb >/dev/null
  command -v psql >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client >/dev/null
  command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl >/dev/null
}

ensure_db() {
  psql_admin -c 'select 1' >/dev/null || die "cannot reach PostgreSQL as admin ($ADMIN_DSN)"
  if [[ "$(psql_admin -c "select 1 from pg_roles where rolname = $(sql_lit "$DB_USER")")" != 1 ]]; then
    log "creating role $DB_USER"
    psql_admin -c "create role $(sql_id "$DB_USER") login password $(sql_lit "$DB_PASSWORD")"
  else
    psql_admin -c "alter role $(sql_id "$DB_USER") login password $(sql_lit "$DB_PASSWORD")"
  fi
  if [[ "$(psql_admin -c "select 1 from pg_database where datname = $(sql_lit "$DB")")" != 1 ]]; then
    log "creating database $DB"
    psql_admin -c "create database $(sql_id "$DB") owner $(sql_id "$DB_USER") encoding 'UTF8' template template0"
  fi
  psql_db -c "create extension if not exists pg_trgm" >/dev/null
}

pg_target() {  # host and port PuppetDB should use
  local h="${REPORTD_PUPPETDB_PG_HOST:-}" p="${REPORTD_PUPPETDB_PG_PORT:-}" row
  if [[ -z "$h" || -z "$p" ]]; then
    row="$(psql_admin -F ' ' -c 'select coalesce(host(inet_server_addr()), $$$$), inet_server_port()' 2>/dev/null || true)"
    [[ -z "$h" ]] && h="$(awk '{print $1}' <<<"$row")"
    [[ -z "$p" ]] && p="$(awk '{print $2}' <<<"$row")"
  fi
  echo "${h:-127.0.0.1} ${p:-5432}"
}

write_config() {
  local pg_host pg_port
  read -r pg_host pg_port < <(pg_target)
  [[ "$pg_host" == *:* ]] && pg_host="[$pg_host]"
  mkdir -p "$DIR/conf.d" "$DIR/var" "$DIR/log"
  chmod 700 "$DIR"
  cat >"$DIR/conf.d/config.ini" <<EOF
# written by reportd tests/integration/puppetdb.sh
[global]
vardir = $DIR/var
logging-config = $DIR/logback.xml

[command-processing]
threads = 1
EOF
  cat >"$DIR/conf.d/database.ini" <<EOF
[database]
subname = //$pg_host:$pg_port/$DB
username = $DB_USER
password = $DB_PASSWORD
EOF
  chmod 600 "$DIR/conf.d/database.ini"
  cat >"$DIR/conf.d/jetty.ini" <<EOF
[jetty]
# plain HTTP on loopback only; no ssl-port => no TLS listener
host = $HOST
port = $PORT
access-log-config = $DIR/request-logging.xml
EOF
  cat >"$DIR/conf.d/repl.ini" <<EOF
[nrepl]
enabled = false
EOF
  cp /etc/puppetdb/conf.d/auth.conf "$DIR/conf.d/auth.conf"
  cp /etc/puppetdb/bootstrap.cfg "$DIR/bootstrap.cfg"
  cat >"$DIR/logback.xml" <<EOF
<configuration>
  <appender name="F1" class="ch.qos.logback.core.FileAppender">
    <file>$DIR/log/puppetdb.log</file>
    <append>true</append>
    <encoder><pattern>%d{yyyy-MM-dd'T'HH:mm:ss.SSSXXX} %-5p [%c{2}] %m%n</pattern></encoder>
  </appender>
  <logger name="org.springframework.jms.connection" level="warn"/>
  <logger name="puppetlabs.trapperkeeper.services.status.status-debug-logging" level="warn"/>
  <root level="info"><appender-ref ref="F1"/></root>
</configuration>
EOF
  cat >"$DIR/request-logging.xml" <<EOF
<configuration debug="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$DIR/log/access.log</file>
    <append>true</append>
    <encoder><pattern>%h %l %u [%t] "%r" %s %b "%i{Referer}" "%i{User-Agent}" %D %header{X-Uncompressed-Length}</pattern></encoder>
  </appender>
  <appender-ref ref="FILE"/>
</configuration>
EOF
}

cmd_install() {
  install_pkg
  ensure_db
  write_config
  log "installed; config in $DIR/conf.d, database $DB on $(pg_target | tr ' ' :)"
}

# -------------------------------------------------------------------- start --
cmd_start() {
  if pid_alive; then
    local cur; cur="$(sed -n 's/^port *= *//p' "$DIR/conf.d/jetty.ini" 2>/dev/null)"
    [[ -z "$cur" || "$cur" == "$PORT" ]] ||
      die "already running from $DIR on port $cur; 'puppetdb.sh stop' first"
    if is_running; then log "already running (pid $(cat "$PIDFILE"))"; print_url; return 0; fi
    log "pid $(cat "$PIDFILE") exists but is not running yet; waiting for it"
  else
    if curl -s -m 2 -o /dev/null "$URL/" 2>/dev/null; then
      die "something else already listens on $HOST:$PORT"
    fi
    cmd_install
    # same command line as the package's systemd unit, with our config dir
    # shellcheck disable=SC2086
    setsid nohup "$JAVA" $JAVA_ARGS -Djava.security.egd=/dev/urandom \
      -XX:OnOutOfMemoryError="kill -9 %p" \
      -cp "$JAR" clojure.main -m puppetlabs.puppetdb.core services \
      --config "$DIR/conf.d" --bootstrap-config "$DIR/bootstrap.cfg" \
      --restart-file "$DIR/restart" \
      </dev/null >>"$DIR/log/stdout.log" 2>&1 &
    echo $! >"$PIDFILE"
    log "started pid $! (log: $DIR/log/puppetdb.log)"
  fi
  local t0=$SECONDS
  while (( SECONDS - t0 < TIMEOUT )); do
    if is_running; then
      log "running after $((SECONDS - t0)) s"
      echo "started in $((SECONDS - t0)) s"
      print_url
      return 0
    fi
    if ! pid_alive; then
      tail -n 30 "$DIR/log/stdout.log" "$DIR/log/puppetdb.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
      die "PuppetDB exited during startup"
    fi
    sleep 1
  done
  tail -n 30 "$DIR/log/puppetdb.log" >&2 2>/dev/null || true
  die "PuppetDB not running after ${TIMEOUT} s (still starting; pid $(cat "$PIDFILE"); 'puppetdb.sh stop' to end it)"
}

print_url() {
  echo "$URL"
  echo "export REPORTD_TEST_PUPPETDB_URL=$URL"
}

# --------------------------------------------------------------------- stop --
cmd_stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; log "not running"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop after TERM; KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

# ------------------------------------------------------------------- status --
cmd_status() {
  local js cur
  if pid_alive; then
    cur="$(sed -n 's/^port *= *//p' "$DIR/conf.d/jetty.ini" 2>/dev/null)"
    if [[ -n "$cur" && "$cur" != "$PORT" ]]; then
      PORT="$cur"; URL="http://$HOST:$PORT"; STATUS_URL="$URL/status/v1/services/puppetdb-status"
    fi
    js="$(status_json)"
    if grep -q '"state" *: *"running"' <<<"$js"; then
      echo "running pid=$(cat "$PIDFILE") url=$URL"
      return 0
    fi
    echo "starting pid=$(cat "$PIDFILE") url=$URL ${js:+status=$js}"
    return 3
  fi
  echo "stopped"
  return 3
}

# -------------------------------------------------------------------- reset --
cmd_reset() {
  local was_running=0
  if pid_alive; then was_running=1; cmd_stop; fi
  install_pkg
  psql_admin -c "select 1" >/dev/null || die "cannot reach PostgreSQL as admin ($ADMIN_DSN)"
  log "dropping database $DB"
  psql_admin -c "drop database if exists $(sql_id "$DB") with (force)"
  rm -rf "$DIR/var"
  ensure_db
  write_config
  log "database $DB recreated, vardir emptied"
  if (( was_running )); then cmd_start; fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  reset) cmd_reset ;;
  url) echo "$URL" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
