#!/usr/bin/env bash
# Tollgate's benchmark: throughput, latency, stream time to first byte and peak memory of the
# relay on SQLite, MariaDB and PostgreSQL, against the same numbers for the fake upstream alone
# ("direct") and for nginx as a plain reverse proxy in front of it, all in one run.
# Run from anywhere: `bash bench/run.sh`. See bench/README.md for what each number means.
#
# Knobs (environment): CARGO_TARGET_DIR (default target), BENCH_BACKENDS ("sqlite mariadb
# postgres"), BENCH_CONCURRENCY ("1 64 256"), BENCH_DURATION (10, seconds per run),
# BENCH_WARMUP (2, seconds before each run), BENCH_TTFB_REQUESTS (300), BENCH_TTFB_CONCURRENCY
# ("1 64"), BENCH_CUSTOMERS (32: the many-customers mode's customers, one key each),
# BENCH_MODES ("many one": customer modes), BENCH_QUIET_WAIT (60), BENCH_SKIP_BUILD (unset).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release"
BACKENDS=${BENCH_BACKENDS:-"sqlite mariadb postgres"}
CONCURRENCY=${BENCH_CONCURRENCY:-"1 64 256"}
TTFB_CONCURRENCY=${BENCH_TTFB_CONCURRENCY:-"1 64"}
CUSTOMERS=${BENCH_CUSTOMERS:-32}
MODES=${BENCH_MODES:-"many one"}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
TTFB_REQUESTS=${BENCH_TTFB_REQUESTS:-300}

FAKE_ADDR=127.0.0.1:9099
FAKE_CHUNKS=20
TG_ADDR=127.0.0.1:3100
NGINX_ADDR=127.0.0.1:9098
MYSQL_URL=mysql://root@127.0.0.1:3306/tollgate_bench
POSTGRES_URL=postgres://postgres@127.0.0.1:5432/tollgate_bench
EMAIL_PREFIX=bench-
TOPUP=1000000000
SHUTDOWN_GRACE_SECS=10
RESULTS=bench/results/latest.md

DIRECT_URL="http://$FAKE_ADDR/v1/chat/completions"
NGINX_URL="http://$NGINX_ADDR/v1/chat/completions"
RELAY_URL="http://$TG_ADDR/v1/chat/completions"

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
PIDS=()
FAILED=0

say() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf '\nBENCH FAILED: %s\n' "$*" >&2; exit 1; }

# Stops everything this script started (TERM, then KILL after 10 s); keeps the logs on failure.
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 || $FAILED -ne 0 ]]; then
    printf '\nLogs and raw wrk output kept in %s\n' "$WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# wait_until NAME SECONDS PID COMMAND...: polls COMMAND every 0.1 s; fails if PID dies.
wait_until() {
  local name=$1 secs=$2 pid=$3; shift 3
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  warn "$name did not come up within ${secs}s"
  return 1
}

fake_answers() {
  curl -sf -o /dev/null -H 'Content-Type: application/json' \
    -d '{"model":"x","messages":[{"role":"user","content":"hi"}]}' "$DIRECT_URL"
}

# ---------------------------------------------------------------------------------------------
say "machine"
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MEM_GB=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)
MACHINE="$(nproc) CPUs ($CPU_MODEL), ${MEM_GB} GiB RAM, Linux $(uname -r)"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- src tests Cargo.toml Cargo.lock bench/fake-upstream 2>/dev/null) ]]; then
  COMMIT="$COMMIT (with uncommitted changes)"
fi
echo "$MACHINE; tollgate $COMMIT" >&2

say "tools"
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
if [[ $BACKENDS == *sqlite* ]]; then command -v sqlite3 >/dev/null || need_apt+=(sqlite3); fi
[[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  echo "installing ${need_apt[*]}" >&2
  $SUDO apt-get install -y "${need_apt[@]}" >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${need_apt[@]}" >/dev/null; } ||
    die "could not install ${need_apt[*]}"
fi
wrk -v 2>&1 | head -1 >&2 || true

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  say "cargo build --release --workspace (CARGO_TARGET_DIR=$TARGET_DIR)"
  cargo build --release --workspace
fi
[[ -x $BIN/tollgate && -x $BIN/fake-upstream ]] || die "no release binaries in $BIN"

for addr in "$FAKE_ADDR" "$TG_ADDR" "$NGINX_ADDR"; do
  port_free "$addr" || die "$addr is already in use; stop whatever listens there"
done

# ---------------------------------------------------------------------------------------------
ROWS=()          # Markdown table rows
declare -A RPS P50 P99 ERR TTFB_P50 TTFB_P99 TTFB_HEAD_P50 RSS_MB BOOKS
LAST_REQUESTS=0  # requests wrk completed in the last run_wrk, warm-up included

# field LINE NAME: the value of NAME=... in LINE
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

# CPU accounting, so that a run disturbed by other work on the machine shows it.
CLK_TCK=$(getconf CLK_TCK)
TG_PID=  # the running `tollgate serve`, if any
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }  # user + nice + system, all CPUs
proc_ticks() { # user + system ticks of a process, 0 when it is gone
  local v=0
  [[ -n ${1:-} ]] && v=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null) || true
  echo "${v:-0}"
}
now_s() { date +%s.%N; }
DB_SERVER=  # mariadb or postgres while one is measured: its server's CPU is not "other"
db_ticks() {
  local pids=() p t=0
  case $DB_SERVER in
    mariadb) mapfile -t pids < <(pgrep -x mariadbd; pgrep -x mysqld) ;;
    postgres) mapfile -t pids < <(pgrep -u postgres) ;;
  esac
  for p in "${pids[@]}"; do t=$((t + $(proc_ticks "$p"))); done
  echo "$t"
}

# Before a run: wait (up to BENCH_QUIET_WAIT s) until other processes use < 20% of one CPU.
wait_quiet() {
  local deadline=$((SECONDS + ${BENCH_QUIET_WAIT:-60})) b0 b1 o0 o1 other
  while :; do
    b0=$(busy_ticks) o0=$(($(proc_ticks "$TG_PID") + $(proc_ticks "$FAKE_PID") + $(db_ticks)))
    sleep 1
    b1=$(busy_ticks) o1=$(($(proc_ticks "$TG_PID") + $(proc_ticks "$FAKE_PID") + $(db_ticks)))
    other=$(((b1 - b0 - (o1 - o0)) * 100 / CLK_TCK))
    ((other < 20)) && return 0
    if ((SECONDS >= deadline)); then
      warn "other processes use ${other}% CPU; measuring anyway (see the 'other CPU' column)"
      return 0
    fi
  done
}

# run_wrk TARGET MODE CONCURRENCY URL KEYS: a warm-up, then the measured run; appends a row.
# KEYS: empty, one key, or several comma-separated (taken in turn, request by request).
run_wrk() {
  local target=$1 mode=$2 conc=$3 url=$4 keys=$5 stream=0 out line warm key="" many=""
  [[ $mode == stream ]] && stream=1
  if [[ $keys == *,* ]]; then many=$keys; else key=$keys; fi
  local tag="$target-$mode-c$conc" ftag
  ftag=${tag//\//_}
  wait_quiet
  BENCH_KEY=$key BENCH_KEYS=$many BENCH_STREAM=$stream wrk -t1 -c"$conc" -d"${WARMUP}s" --timeout 10s \
    -s bench/post.lua "$url" >"$WORK/warmup-$ftag.txt" 2>&1 || true
  out="$WORK/wrk-$ftag.txt"
  local t0 t1 b0 b1 g0 g1 f0 f1 d0 d1 wrk_cpu
  t0=$(now_s) b0=$(busy_ticks) g0=$(proc_ticks "$TG_PID") f0=$(proc_ticks "$FAKE_PID") d0=$(db_ticks)
  wrk_cpu=$( { TIMEFORMAT='%U %S'; time BENCH_KEY=$key BENCH_KEYS=$many BENCH_STREAM=$stream wrk -t1 -c"$conc" -d"${DURATION}s" \
    --timeout 10s --latency -s bench/post.lua "$url" >"$out" 2>&1 || true; } 2>&1)
  t1=$(now_s) b1=$(busy_ticks) g1=$(proc_ticks "$TG_PID") f1=$(proc_ticks "$FAKE_PID") d1=$(db_ticks)
  # percent of one CPU over the run: Tollgate, the database server, and everything that is
  # neither these nor the fake nor wrk
  local tg_cpu db_cpu other_cpu
  read -r tg_cpu db_cpu other_cpu < <(awk -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v b="$((b1 - b0))" \
    -v g="$((g1 - g0))" -v f="$((f1 - f0))" -v d="$((d1 - d0))" -v w="$wrk_cpu" 'BEGIN {
      split(w, ws, " "); wall = t1 - t0; wt = (ws[1] + ws[2]) * hz; if (d < 0) d = 0
      other = (b - g - f - d - wt) / hz / wall * 100; if (other < 0) other = 0
      printf "%.0f %.0f %.0f\n", g / hz / wall * 100, d / hz / wall * 100, other }')
  [[ -n $TG_PID ]] || tg_cpu="-"
  [[ -n $DB_SERVER ]] || db_cpu="-"
  line=$(grep '^BENCH_RESULT' "$out" || true)
  [[ -n $line ]] || { cat "$out" >&2; die "wrk gave no result for $tag"; }
  warm=$(grep '^BENCH_RESULT' "$WORK/warmup-$ftag.txt" || true)
  LAST_REQUESTS=$(($(field "$line" requests) + $(field "$warm" requests)))

  local requests duration rps p50 p99 status socket non2xx errors
  requests=$(field "$line" requests)
  duration=$(field "$line" duration_us)
  rps=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  p50=$(awk -v v="$(field "$line" p50_us)" 'BEGIN { printf "%.2f", v / 1000 }')
  p99=$(awk -v v="$(field "$line" p99_us)" 'BEGIN { printf "%.2f", v / 1000 }')
  status=$(field "$line" errors_status)
  socket=$(($(field "$line" errors_connect) + $(field "$line" errors_read) + $(field "$line" errors_write) + $(field "$line" errors_timeout)))
  # wrk's own summary line, when there is one, must agree with the Lua count.
  non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$out")
  if [[ -n $non2xx && $non2xx != "$status" ]]; then
    warn "$tag: wrk printed $non2xx non-2xx responses, the script counted $status"
    status=$non2xx
  fi
  if [[ $status -eq 0 && $socket -eq 0 ]]; then
    errors=0
  else
    errors="**FLAGGED: $status non-2xx, $socket socket errors/timeouts**"
    FAILED=1
  fi
  RPS[$tag]=$rps P50[$tag]=$p50 P99[$tag]=$p99 ERR[$tag]="$status/$socket"
  # Against the same run's nginx and direct rows (measured first): throughput ratios and the
  # latency added over direct.
  local vs_nginx="-" vs_direct="-" added50="-" added99="-" ref="nginx-$mode-c$conc" base="direct-$mode-c$conc"
  if [[ $target != direct && -n ${RPS[$base]:-} ]]; then
    [[ -n ${RPS[$ref]:-} && $target != nginx ]] && vs_nginx=$(awk -v a="$rps" -v b="${RPS[$ref]}" 'BEGIN { printf "%.3f", a / b }')
    vs_direct=$(awk -v a="$rps" -v b="${RPS[$base]}" 'BEGIN { printf "%.3f", a / b }')
    added50=$(awk -v a="$p50" -v b="${P50[$base]}" 'BEGIN { printf "%+.2f", a - b }')
    added99=$(awk -v a="$p99" -v b="${P99[$base]}" 'BEGIN { printf "%+.2f", a - b }')
  fi
  ROWS+=("| $target | $mode | $conc | $rps | $vs_nginx | $vs_direct | $p50 | $p99 | $added50 | $added99 | $errors | $tg_cpu | $db_cpu | $other_cpu |")
  printf '%-28s %8s req/s  p50 %7s ms  p99 %7s ms  errors %s  (CPU %%: tollgate %s, db %s, other %s)\n' \
    "$tag" "$rps" "$p50" "$p99" "$errors" "$tg_cpu" "$db_cpu" "$other_cpu" >&2
}

# run_ttfb TARGET URL KEYS: the stream time to first byte at each of TTFB_CONCURRENCY; keys
# are given out to connections in turn. Results under "TARGET-cN".
run_ttfb() {
  local target=$1 url=$2 keys=$3 line conc count tag
  LAST_REQUESTS=0
  for conc in $TTFB_CONCURRENCY; do
    tag="$target-c$conc"
    count=$((conc * 20 > TTFB_REQUESTS ? conc * 20 : TTFB_REQUESTS))
    wait_quiet
    line=$(python3 bench/ttfb.py "$url" "$count" "$keys" "$conc" | tee "$WORK/ttfb-${tag//\//_}.txt") || {
      warn "$tag: TTFB run had errors: $line"
      FAILED=1
    }
    [[ $line == TTFB_RESULT* ]] || die "ttfb.py gave no result for $tag"
    TTFB_P50[$tag]=$(field "$line" body_p50_ms)
    TTFB_P99[$tag]=$(field "$line" body_p99_ms)
    TTFB_HEAD_P50[$tag]=$(field "$line" head_p50_ms)
    echo "$tag TTFB: first body byte p50 ${TTFB_P50[$tag]} ms, p99 ${TTFB_P99[$tag]} ms (head p50 ${TTFB_HEAD_P50[$tag]} ms); $(field "$line" errors) errors" >&2
    # Each connection also sends 20 warm-up requests.
    LAST_REQUESTS=$((LAST_REQUESTS + (count / conc) * conc + 20 * conc))
  done
}

# sql BACKEND QUERY: one value
sql() {
  case $1 in
    sqlite) sqlite3 "$SQLITE_FILE" "$2" ;;
    mariadb) mysql -h 127.0.0.1 -uroot -N -B tollgate_bench -e "$2" ;;
    postgres) psql -h 127.0.0.1 -U postgres -d tollgate_bench -Atc "$2" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
say "fake upstream on $FAKE_ADDR ($FAKE_CHUNKS chunks per answer)"
"$BIN/fake-upstream" "$FAKE_ADDR" "$FAKE_CHUNKS" >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
PIDS+=("$FAKE_PID")
wait_until fake-upstream 10 "$FAKE_PID" fake_answers || { cat "$WORK/fake.log" >&2; die "fake upstream did not start"; }

say "direct to the fake upstream"
for mode in non-stream stream; do
  for c in $CONCURRENCY; do run_wrk direct "$mode" "$c" "$DIRECT_URL" ""; done
done
run_ttfb direct "$DIRECT_URL" ""

say "nginx as a plain reverse proxy on $NGINX_ADDR (one worker, upstream keep-alive, no buffering)"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream fake {
    server $FAKE_ADDR;
    keepalive 512;
  }
  server {
    listen $NGINX_ADDR;
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
/usr/sbin/nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
nginx_answers() { curl -sf -o /dev/null -H 'Content-Type: application/json' -d '{"model":"x","messages":[]}' "$NGINX_URL"; }
wait_until nginx 10 "$NGINX_PID" nginx_answers || { cat "$WORK/nginx/"*.log >&2; die "nginx did not start"; }
/usr/sbin/nginx -v 2>&1 | sed 's/^/  /' >&2
TG_PID=$(pgrep -P "$NGINX_PID" | head -1)  # the worker's CPU is shown in the Tollgate CPU column of its rows
for mode in non-stream stream; do
  for c in $CONCURRENCY; do run_wrk nginx "$mode" "$c" "$NGINX_URL" ""; done
done
run_ttfb nginx "$NGINX_URL" ""
TG_PID=
kill -TERM "$NGINX_PID" 2>/dev/null || true

bench_backend() {
  local backend=$1 url
  say "backend: $backend"
  case $backend in
    sqlite)
      mkdir -p "$WORK/sqlite"
      SQLITE_FILE="$WORK/sqlite/tollgate.db"
      url="sqlite://$SQLITE_FILE"
      ;;
    mariadb)
      mysql -h 127.0.0.1 -uroot -e \
        "DROP DATABASE IF EXISTS tollgate_bench; CREATE DATABASE tollgate_bench CHARACTER SET utf8mb4"
      url=$MYSQL_URL
      ;;
    postgres)
      PGOPTIONS=--client-min-messages=warning psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS tollgate_bench WITH (FORCE)" >/dev/null
      psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE tollgate_bench" >/dev/null
      url=$POSTGRES_URL
      ;;
    *) die "unknown backend $backend (sqlite, mariadb, postgres)" ;;
  esac

  case $backend in mariadb | postgres) DB_SERVER=$backend ;; *) DB_SERVER= ;; esac
  local -a tgenv=(env DATABASE_URL="$url" RUST_LOG="${BENCH_RUST_LOG:-warn}")
  "${tgenv[@]}" "$BIN/tollgate" migrate >&2
  "${tgenv[@]}" "$BIN/tollgate" model set bench-model --input-price 0.15 --output-price 0.60 \
    --max-output 256 --context-window 128000 --upstream-model bench-upstream >&2
  # The customers: one key each, each topped up.
  local -a keys=()
  local i email key
  for i in $(seq -w 1 "$CUSTOMERS"); do
    email="$EMAIL_PREFIX$i@example.com"
    "${tgenv[@]}" "$BIN/tollgate" user create --email "$email" >/dev/null 2>>"$WORK/setup-$backend.log"
    "${tgenv[@]}" "$BIN/tollgate" user topup --email "$email" --amount "$TOPUP" --reason bench >/dev/null 2>>"$WORK/setup-$backend.log"
    key=$("${tgenv[@]}" "$BIN/tollgate" key create --email "$email" 2>>"$WORK/setup-$backend.log")
    [[ $key == sk-* ]] || die "key create printed '$key'"
    keys+=("$key")
  done
  echo "$CUSTOMERS customers with one key each, topped up with $TOPUP" >&2
  local who="SELECT id FROM users WHERE email LIKE '${EMAIL_PREFIX}%'"
  local balance_before
  balance_before=$(sql "$backend" "SELECT COALESCE(SUM(amount), 0) FROM balances WHERE user_id IN ($who)")

  "${tgenv[@]}" LISTEN_ADDR="$TG_ADDR" OPENAI_BASE_URL="http://$FAKE_ADDR/v1" OPENAI_API_KEY=sk-bench \
    ALLOW_PRIVATE_UPSTREAMS=true ENCRYPTION_KEY=YmVuY2gtb25seS1lbmNyeXB0aW9uLWtleS0zMmJ5dGU= \
    MAX_CONCURRENT_REQUESTS_PER_USER=100000 SCHEDULER_ENABLED=false SHUTDOWN_GRACE_SECS=$SHUTDOWN_GRACE_SECS \
    "$BIN/tollgate" serve >"$WORK/serve-$backend.log" 2>&1 &
  local tg_pid=$!
  PIDS+=("$tg_pid")
  TG_PID=$tg_pid
  wait_until "tollgate serve" 60 "$tg_pid" curl -sf -o /dev/null "http://$TG_ADDR/healthz" ||
    { cat "$WORK/serve-$backend.log" >&2; die "tollgate serve ($backend) did not start"; }
  # One request by hand, so a broken setup fails here with a readable answer.
  local probe
  probe=$(curl -s -w ' HTTP %{http_code}' -H "Authorization: Bearer ${keys[0]}" -H 'Content-Type: application/json' \
    -d '{"model":"bench-model","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":64}' \
    "$RELAY_URL")
  [[ $probe == *' HTTP 200' ]] || die "$backend: the probe request failed: $probe"
  local served=1

  local cmode keyarg
  for cmode in $MODES; do
    if [[ $cmode == many ]]; then keyarg=$(IFS=,; echo "${keys[*]}"); else keyarg=${keys[0]}; fi
    for mode in non-stream stream; do
      for c in $CONCURRENCY; do
        run_wrk "$backend/$cmode" "$mode" "$c" "$RELAY_URL" "$keyarg"
        served=$((served + LAST_REQUESTS))
      done
    done
    run_ttfb "$backend/$cmode" "$RELAY_URL" "$keyarg"
    served=$((served + LAST_REQUESTS))
  done

  local hwm
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$tg_pid/status")
  RSS_MB[$backend]=$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')

  # Settlement is asynchronous: wait for the last reservations to resolve.
  local pending
  for _ in $(seq 300); do
    pending=$(sql "$backend" "SELECT COUNT(*) FROM reservations WHERE state = 'pending'")
    [[ $pending -eq 0 ]] && break
    sleep 0.1
  done

  # Stop it the way an operator would, and see that it goes.
  TG_PID= DB_SERVER=
  kill -TERM "$tg_pid"
  local stopped=no rc=0
  for _ in $(seq $(((SHUTDOWN_GRACE_SECS + 5) * 10))); do
    kill -0 "$tg_pid" 2>/dev/null || { stopped=yes; break; }
    sleep 0.1
  done
  if [[ $stopped == yes ]]; then wait "$tg_pid" || rc=$?; fi
  [[ $stopped == yes ]] || { warn "$backend: tollgate serve ignored SIGTERM for $((SHUTDOWN_GRACE_SECS + 5)) s"; FAILED=1; }
  [[ $rc -eq 0 ]] || { warn "$backend: tollgate serve exited with status $rc"; FAILED=1; }

  # The books.
  local usage_rows usage_cost balance_now pending_amount charged ledger problems=()
  usage_rows=$(sql "$backend" "SELECT COUNT(*) FROM usage_logs WHERE user_id IN ($who)")
  usage_cost=$(sql "$backend" "SELECT COALESCE(SUM(cost), 0) FROM usage_logs WHERE user_id IN ($who)")
  pending=$(sql "$backend" "SELECT COUNT(*) FROM reservations WHERE user_id IN ($who) AND state = 'pending'")
  pending_amount=$(sql "$backend" "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE user_id IN ($who) AND state = 'pending'")
  charged=$(sql "$backend" "SELECT COALESCE(SUM(charged_amount), 0) FROM reservations WHERE user_id IN ($who) AND state <> 'pending'")
  ledger=$(sql "$backend" "SELECT COALESCE(SUM(amount), 0) FROM credit_transactions WHERE user_id IN ($who)")
  balance_now=$(sql "$backend" "SELECT COALESCE(SUM(amount), 0) FROM balances WHERE user_id IN ($who)")
  local balance_after=$balance_now

  [[ $usage_rows -gt 0 ]] || problems+=("no usage rows")
  [[ $balance_after -lt $balance_before ]] || problems+=("balance did not go down ($balance_before -> $balance_after)")
  [[ $pending -eq 0 ]] || problems+=("$pending reservations still pending")
  [[ $((balance_now + pending_amount + charged)) -eq $ledger ]] ||
    problems+=("invariant broken: balance $balance_now + pending $pending_amount + charged $charged != ledger $ledger")
  [[ $usage_cost -eq $charged ]] || problems+=("usage cost $usage_cost != charged $charged")
  [[ $usage_rows -ge $served ]] || problems+=("fewer usage rows ($usage_rows) than requests answered ($served)")
  local log_errors
  log_errors=$(grep -ciE 'panic|error' "$WORK/serve-$backend.log" || true)
  [[ $log_errors -eq 0 ]] || problems+=("$log_errors error lines in the serve log, e.g. $(grep -iE -m1 'panic|error' "$WORK/serve-$backend.log" | cut -c1-300)")

  local verdict="OK"
  if [[ ${#problems[@]} -gt 0 ]]; then
    verdict="**PROBLEM: $(IFS=';'; echo "${problems[*]}")**"
    FAILED=1
  fi
  BOOKS[$backend]="$served requests answered (wrk counts completed ones, warm-ups and TTFB included); $usage_rows usage rows; the customers' balances $balance_before -> $balance_after micro-units; settled charges $charged; $pending pending; invariant balance + pending + charged = ledger: $verdict"
  echo "books ($backend): ${BOOKS[$backend]}" >&2
  echo "peak RSS ($backend): ${RSS_MB[$backend]} MB" >&2
}

# A database that is down is started the way .ci/run does; one that stays down is reported.
backend_up() {
  case $1 in
    sqlite) return 0 ;;
    mariadb)
      mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 && return 0
      [[ -x /usr/sbin/mariadbd ]] && start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 || true
      for _ in $(seq 30); do mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 && return 0; sleep 1; done
      ;;
    postgres)
      pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && return 0
      [[ -d /etc/postgresql ]] && pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >/dev/null 2>&1 || true
      for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && return 0; sleep 1; done
      ;;
  esac
  return 1
}

DONE_BACKENDS=()
for backend in $BACKENDS; do
  if backend_up "$backend"; then
    bench_backend "$backend"
    DONE_BACKENDS+=("$backend")
  else
    warn "backend $backend is not reachable: skipped"
    ROWS+=("| $backend | - | - | - | - | - | - | - | - | - | **NOT RUN (database unreachable)** | - | - | - |")
    FAILED=1
  fi
done

# ---------------------------------------------------------------------------------------------
ms_diff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
mark() { awk -v ok="$1" 'BEGIN { exit !ok }' && echo met || echo "**MISSED**"; }
# target LINE: "- what: value — met/MISSED" from an awk condition on the value
target() { # text value condition(awk, on v)
  echo "- $1: $2 — $(mark "$(awk -v v="$2" "BEGIN { print ($3) ? 1 : 0 }")")"
}

{
  echo "# Tollgate benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); tollgate $COMMIT"
  echo
  echo "Machine: $MACHINE. Load generator, Tollgate, nginx and the fake upstream share these cores."
  echo "wrk 1 thread, ${DURATION} s per run after a ${WARMUP} s warm-up; fake upstream answers with $FAKE_CHUNKS completion chunks."
  echo "Targets: \`direct\` is the fake alone; \`nginx\` a plain reverse proxy in front of it (one worker, upstream keep-alive, no buffering);"
  echo "\`BACKEND/many\` is Tollgate with full billing, requests taking $CUSTOMERS customers' keys in turn; \`BACKEND/one\` one customer's key."
  echo "× nginx and × direct: throughput as a share of the same mode and concurrency through nginx and direct; added: latency over direct."
  echo "CPU columns: percent of one CPU during the run (200 = both cores), used by \`tollgate serve\` (by nginx on its rows), by the MariaDB/PostgreSQL server,"
  echo "and by everything else except the fake upstream and wrk (softirq time of the loopback traffic not counted): a high 'other' means a disturbed run."
  echo
  echo "| target | mode | concurrency | req/s | × nginx | × direct | p50 ms | p99 ms | p50 added | p99 added | errors | Tollgate CPU % | DB CPU % | other CPU % |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Stream time to first byte (first SSE body byte; each connection sends its requests one after another):"
  echo
  for t in direct nginx $(for b in "${DONE_BACKENDS[@]}"; do for m in $MODES; do echo "$b/$m"; done; done); do
    for c in $TTFB_CONCURRENCY; do
      [[ -n ${TTFB_P50[$t-c$c]:-} ]] || continue
      line="- $t, $c connection(s): p50 ${TTFB_P50[$t-c$c]} ms, p99 ${TTFB_P99[$t-c$c]} ms"
      if [[ $t != direct ]]; then
        line+="; added over direct: p50 $(ms_diff "${TTFB_P50[$t-c$c]}" "${TTFB_P50[direct-c$c]}") ms, p99 $(ms_diff "${TTFB_P99[$t-c$c]}" "${TTFB_P99[direct-c$c]}") ms"
      fi
      echo "$line"
    done
  done
  echo
  echo "Peak RSS of \`tollgate serve\` (VmHWM after all its runs):"
  echo
  for b in "${DONE_BACKENDS[@]}"; do echo "- $b: ${RSS_MB[$b]} MB"; done
  echo
  echo "Books after the runs:"
  echo
  for b in "${DONE_BACKENDS[@]}"; do echo "- $b: ${BOOKS[$b]}"; done
  echo
  echo "Targets (each against this run's nginx and direct numbers):"
  echo
  have() { [[ -n ${RPS[$1]:-} && -n ${RPS[$2]:-} ]]; }
  if have sqlite/many-non-stream-c64 nginx-non-stream-c64; then
    target "SQLite, many customers, c=64 non-stream, share of nginx (>= 0.25)" \
      "$(awk -v a="${RPS[sqlite/many-non-stream-c64]}" -v b="${RPS[nginx-non-stream-c64]}" 'BEGIN { printf "%.3f", a / b }')" "v >= 0.25"
  fi
  if have sqlite/many-stream-c64 nginx-stream-c64; then
    target "SQLite, many customers, c=64 stream, share of nginx (>= 0.2)" \
      "$(awk -v a="${RPS[sqlite/many-stream-c64]}" -v b="${RPS[nginx-stream-c64]}" 'BEGIN { printf "%.3f", a / b }')" "v >= 0.2"
  fi
  if have sqlite/many-non-stream-c1 direct-non-stream-c1; then
    target "SQLite, c=1 non-stream, p50 added over direct in ms (<= 0.3)" \
      "$(ms_diff "${P50[sqlite/many-non-stream-c1]}" "${P50[direct-non-stream-c1]}")" "v <= 0.3"
  fi
  if [[ -n ${TTFB_P50[sqlite/many-c1]:-} ]]; then
    target "SQLite, stream time to first byte at c=1, p50 added in ms (<= 0.3)" \
      "$(ms_diff "${TTFB_P50[sqlite/many-c1]}" "${TTFB_P50[direct-c1]}")" "v <= 0.3"
  fi
  for b in "${DONE_BACKENDS[@]}"; do
    [[ -n ${RPS[$b/many-non-stream-c1]:-} ]] &&
      target "$b, c=1 non-stream, p99 added over direct in ms (<= 1)" \
        "$(ms_diff "${P99[$b/many-non-stream-c1]}" "${P99[direct-non-stream-c1]}")" "v <= 1"
    if [[ $b != sqlite ]]; then
      [[ -n ${RPS[$b/many-non-stream-c64]:-} ]] &&
        target "$b, many customers, c=64 non-stream req/s (>= 3000)" "${RPS[$b/many-non-stream-c64]}" "v >= 3000"
      [[ -n ${RPS[$b/one-non-stream-c64]:-} ]] &&
        target "$b, one customer, c=64 non-stream req/s (>= 1500)" "${RPS[$b/one-non-stream-c64]}" "v >= 1500"
    fi
    target "$b, peak RSS in MB (<= 80)" "${RSS_MB[$b]}" "v <= 80"
  done
} >"$WORK/latest.md"

mkdir -p "$(dirname "$RESULTS")"
cp "$WORK/latest.md" "$RESULTS"
echo
cat "$RESULTS"
if [[ $FAILED -ne 0 ]]; then
  echo
  echo "Some runs had errors or problems (flagged above)." >&2
  exit 1
fi
