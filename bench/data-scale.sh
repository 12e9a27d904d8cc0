#!/usr/bin/env bash
# Data at scale: fills a fresh database per engine with DATA_ROWS usage rows over 1,000
# customers and 90 days (`tollgate dev seed-usage`), then times the dashboard's and the back
# office's queries for the heaviest customer (`tollgate dev query-times`) and records each
# engine's query plan for the same queries, and measures the hot path (wrk, 64 connections,
# non-stream chat completions through the fake upstream, 32 customers' keys in turn) on the
# empty database and again on the full one. Results: bench/results/data-scale.md.
#
# Knobs (environment): CARGO_TARGET_DIR (default target), DATA_BACKENDS ("sqlite mariadb
# postgres"), DATA_ROWS (5000000), DATA_USERS (1000), DATA_DAYS (90), DATA_RUNS (5),
# DATA_HOT_SECS (10; 0 skips the hot-path runs), BENCH_SKIP_BUILD (unset).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/tollgate"
BACKENDS=${DATA_BACKENDS:-"sqlite mariadb postgres"}
ROWS=${DATA_ROWS:-5000000}
USERS=${DATA_USERS:-1000}
DAYS=${DATA_DAYS:-90}
RUNS=${DATA_RUNS:-5}
HOT_SECS=${DATA_HOT_SECS:-10}
FAKE_ADDR=127.0.0.1:9099
TG_ADDR=127.0.0.1:3100
RESULTS=bench/results/data-scale.md
WORK=$(mktemp -d /tmp/tollgate-data.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n==> %s\n' "$*" >&2; }

if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  say "release build"
  cargo build --release --locked --workspace
fi

if [[ $HOT_SECS != 0 ]]; then
  command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
  "$TARGET_DIR/release/fake-upstream" "$FAKE_ADDR" 20 >"$WORK/fake.log" 2>&1 &
  PIDS+=($!)
  sleep 0.5
fi

# The hot path on the database in DATABASE_URL as it is: 32 customers with one key each (made
# here, besides whatever the database holds), then `tollgate serve` in front of the fake
# upstream and wrk with 64 connections taking the keys in turn. Prints "N req/s, p50 X ms, p99
# Y ms, 0 errors".
hot_path() {
  local -a keys=()
  local i email key
  "$BIN" model set bench-model --input-price 0.15 --output-price 0.60 --max-output 256 \
    --context-window 128000 --upstream-model bench-upstream >/dev/null 2>&1
  for i in $(seq -w 1 32); do
    email="hot-$1-$i@example.com"
    "$BIN" user create --email "$email" >/dev/null 2>&1
    "$BIN" user topup --email "$email" --amount 1000000 --reason bench >/dev/null 2>&1
    key=$("$BIN" key create --email "$email" 2>/dev/null)
    keys+=("$key")
  done
  LISTEN_ADDR=$TG_ADDR OPENAI_BASE_URL="http://$FAKE_ADDR/v1" OPENAI_API_KEY=sk-bench \
    ALLOW_PRIVATE_UPSTREAMS=true ENCRYPTION_KEY=YmVuY2gtb25seS1lbmNyeXB0aW9uLWtleS0zMmJ5dGU= \
    MAX_CONCURRENT_REQUESTS_PER_USER=100000 SCHEDULER_ENABLED=false RUST_LOG=warn \
    "$BIN" serve >"$WORK/serve-$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 300); do curl -sf -o /dev/null "http://$TG_ADDR/healthz" && break; sleep 0.1; done
  local keyarg
  keyarg=$(IFS=,; echo "${keys[*]}")
  BENCH_KEYS=$keyarg wrk -t1 -c64 -d2s -s bench/post.lua "http://$TG_ADDR/v1/chat/completions" >/dev/null 2>&1 || true
  local line
  line=$(BENCH_KEYS=$keyarg wrk -t1 -c64 -d"${HOT_SECS}s" --timeout 10s --latency -s bench/post.lua \
    "http://$TG_ADDR/v1/chat/completions" 2>&1 | grep '^BENCH_RESULT' || true)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk -v l="$line" 'BEGIN {
    n = split(l, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    errors = v["errors_connect"] + v["errors_read"] + v["errors_write"] + v["errors_timeout"] + v["errors_status"]
    printf "%.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors\n", v["requests"] / (v["duration_us"] / 1e6), v["p50_us"] / 1000, v["p99_us"] / 1000, errors }'
}

# The queries the dashboard and the back office run, as each engine is asked them (USER, FROM,
# TO and SINCE are filled in below); their plans show which index answers each.
queries() {
  cat <<SQL
usage totals|SELECT COALESCE(SUM(cost), 0), COALESCE(SUM(total_tokens), 0), COALESCE(SUM(request_count), 0) FROM usage_logs WHERE user_id = $USER_ID
usage page|SELECT * FROM usage_logs WHERE user_id = $USER_ID ORDER BY created_at DESC, id DESC LIMIT 20 OFFSET 980
usage page, one model, 30 days|SELECT * FROM usage_logs WHERE user_id = $USER_ID AND model = 'gpt-4o' AND created_at >= $SINCE ORDER BY created_at DESC, id DESC LIMIT 20
CSV export batch|SELECT * FROM usage_logs WHERE user_id = $USER_ID AND (created_at < $NOW_MS OR (created_at = $NOW_MS AND id < $MAX_ID)) ORDER BY created_at DESC, id DESC LIMIT 1000
daily chart|SELECT day, model, SUM(request_count), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), SUM(cost) FROM usage_logs WHERE user_id = $USER_ID AND created_at >= $FROM_MS AND created_at < $AFTER_TO_MS GROUP BY day, model
revenue by month|SELECT SUBSTR(day, 1, 7), model, SUM(cost), SUM(total_tokens), SUM(request_count) FROM usage_logs WHERE created_at >= $FROM_MS AND created_at < $AFTER_TO_MS GROUP BY SUBSTR(day, 1, 7), model
paying customers by month|SELECT SUBSTR(day, 1, 7), COUNT(DISTINCT CASE WHEN cost > 0 THEN user_id END) FROM usage_logs WHERE created_at >= $FROM_MS AND created_at < $AFTER_TO_MS GROUP BY SUBSTR(day, 1, 7)
SQL
}

sql() { # engine, statement
  case $1 in
    sqlite) sqlite3 "$WORK/scale.db" "$2" ;;
    mariadb) mysql -h 127.0.0.1 -uroot -N -B tollgate_scale -e "$2" ;;
    postgres) psql -h 127.0.0.1 -U postgres -d tollgate_scale -Atc "$2" ;;
  esac
}

explain() { # engine, statement
  case $1 in
    sqlite) sql sqlite "EXPLAIN QUERY PLAN $2" | sed 's/^/    /' ;;
    mariadb) mysql -h 127.0.0.1 -uroot -t tollgate_scale -e "EXPLAIN $2" | sed 's/^/    /' ;;
    postgres) sql postgres "EXPLAIN $2" | sed 's/^/    /' ;;
  esac
}

{
  echo "# Data at scale"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, commit $(git rev-parse --short HEAD);" \
    "$ROWS usage rows over $USERS customers and $DAYS days per engine."
} >"$WORK/report.md"

for engine in $BACKENDS; do
  case $engine in
    sqlite) url="sqlite://$WORK/scale.db?mode=rwc" ;;
    mariadb)
      mysql -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS tollgate_scale; CREATE DATABASE tollgate_scale CHARACTER SET utf8mb4"
      url=mysql://root@127.0.0.1:3306/tollgate_scale ;;
    postgres)
      PGOPTIONS=--client-min-messages=warning psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS tollgate_scale WITH (FORCE)" >/dev/null
      psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE tollgate_scale" >/dev/null
      url=postgres://postgres@127.0.0.1:5432/tollgate_scale ;;
    *) echo "unknown engine $engine" >&2; exit 1 ;;
  esac
  export DATABASE_URL=$url
  hot_empty=""
  if [[ $HOT_SECS != 0 ]]; then
    say "$engine: the hot path on the empty database"
    "$BIN" --create migrate >/dev/null
    hot_empty=$(hot_path empty)
  fi
  say "$engine: seeding $ROWS rows"
  seeded=$("$BIN" --create dev seed-usage --rows "$ROWS" --users "$USERS" --days "$DAYS")
  say "$engine: timing the queries"
  times=$("$BIN" dev query-times --runs "$RUNS")
  bytes=""
  case $engine in
    sqlite) bytes="$(du -h "$WORK/scale.db" | cut -f1) database file" ;;
    mariadb) bytes="$(sql mariadb "SELECT CONCAT(ROUND((data_length + index_length) / 1048576), ' MiB table + indexes') FROM information_schema.tables WHERE table_schema = 'tollgate_scale' AND table_name = 'usage_logs'")" ;;
    postgres) bytes="$(sql postgres "SELECT pg_size_pretty(pg_total_relation_size('usage_logs')) || ' table + indexes'")" ;;
  esac
  hot_full=""
  if [[ $HOT_SECS != 0 ]]; then
    say "$engine: the hot path on the full database"
    hot_full=$(hot_path full)
  fi
  USER_ID=$(sql "$engine" "SELECT id FROM users WHERE email = 'seed-00000@seed.invalid'")
  MAX_ID=$(sql "$engine" "SELECT MAX(id) FROM usage_logs")
  SINCE=$(( ($(date +%s) - 30 * 86400) * 1000 ))
  NOW_MS=$(( $(date +%s) * 1000 ))
  FROM_DAY=$(date -u -d "-$((DAYS - 1)) days" +%F)
  TO_DAY=$(date -u +%F)
  FROM_MS=$(( $(date -u -d "$FROM_DAY" +%s) * 1000 ))
  AFTER_TO_MS=$(( ($(date -u -d "$TO_DAY" +%s) + 86400) * 1000 ))
  {
    echo
    echo "## $engine"
    echo
    echo "$seeded; $bytes."
    echo
    echo "$times"
    echo
    if [[ $HOT_SECS != 0 ]]; then
      echo "Hot path (wrk, 64 connections, ${HOT_SECS} s, non-stream, 32 customers' keys in turn):"
      echo
      echo "- empty database: $hot_empty"
      echo "- with the $ROWS rows: $hot_full"
      echo
    fi
    echo "Query plans (the heaviest customer, user id $USER_ID):"
    echo
    while IFS='|' read -r name statement; do
      echo "- $name"
      echo
      explain "$engine" "$statement"
      echo
    done < <(queries)
  } >>"$WORK/report.md"
  cat "$WORK/report.md" >&2
done

mkdir -p bench/results
cp "$WORK/report.md" "$RESULTS"
say "written to $RESULTS"
