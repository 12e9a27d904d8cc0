#!/usr/bin/env python3
"""Stream time to first byte, for bench/run.sh.

    ttfb.py URL COUNT [KEYS] [CONCURRENCY]

Sends COUNT streaming chat completions (after a short warm-up per connection) over CONCURRENCY
keep-alive connections (default 1), each sending its requests one after another; KEYS is a
comma-separated list of bearer keys, taken in turn per connection. Prints one line:

    TTFB_RESULT n=300 errors=0 head_p50_ms=... head_p99_ms=... body_p50_ms=... body_p99_ms=...

head  = from the first byte of the request written to the response head parsed;
body  = from the same start to the first byte of the body (the first SSE event) read.
The rest of each stream is read to the end before the next request is sent.
"""

import http.client
import math
import sys
import threading
import time
import urllib.parse

BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello in one short sentence."}],'
    b'"max_tokens":64,"stream":true}'
)
WARMUP = 20


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    # nearest rank
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def connection(url, count, key, heads, bodies, errors, lock):
    """One keep-alive connection sending `count` requests in turn (after the warm-up)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    conn = None
    for i in range(WARMUP + count):
        if conn is None:
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            conn.connect()
        try:
            t0 = time.perf_counter()
            conn.request("POST", url.path, body=BODY, headers=headers)
            resp = conn.getresponse()
            t_head = time.perf_counter()
            first = resp.read(1)
            t_body = time.perf_counter()
            rest = resp.read()
            ok = resp.status == 200 and first == b"d" and b"[DONE]" in rest
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            ok = False
            if conn is not None:
                conn.close()
            conn = None
        if i < WARMUP:
            continue
        with lock:
            if not ok:
                errors.append(1)
                continue
            heads.append((t_head - t0) * 1000.0)
            bodies.append((t_body - t0) * 1000.0)
    if conn is not None:
        conn.close()


def main():
    url = urllib.parse.urlsplit(sys.argv[1])
    count = int(sys.argv[2])
    keys = [k for k in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if k] or [""]
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    heads, bodies, errors, lock = [], [], [], threading.Lock()
    per = max(1, count // concurrency)
    threads = [
        threading.Thread(target=connection, args=(url, per, keys[i % len(keys)], heads, bodies, errors, lock))
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = len(errors)

    heads.sort()
    bodies.sort()
    print(
        "TTFB_RESULT n=%d errors=%d head_p50_ms=%.3f head_p99_ms=%.3f body_p50_ms=%.3f body_p99_ms=%.3f"
        % (
            len(bodies),
            errors,
            percentile(heads, 50),
            percentile(heads, 99),
            percentile(bodies, 50),
            percentile(bodies, 99),
        )
    )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
