#!/usr/bin/env python3
"""Password flood: fires N concurrent password sign-ins at a running `tollgate serve` (release
build) — wrong passwords for a real account and for unknown addresses — and samples the
process's resident memory while they run. Password hashing (argon2id, ~19 MiB each) is bounded
by PASSWORD_HASH_CONCURRENCY, so memory must stay flat however many attempts arrive at once.
Prints the peak RSS and how the attempts were answered.

Run from the repository root after `cargo build --release`:

    python3 bench/password-flood.py               # 200 concurrent attempts
    FLOOD_ATTEMPTS=500 python3 bench/password-flood.py

Knobs (environment): TOLLGATE_BIN (default $CARGO_TARGET_DIR/release/tollgate, else
target/release/tollgate), FLOOD_ATTEMPTS (200), FLOOD_ADDR (127.0.0.1:3198). Exit status 0
when the peak RSS stayed under FLOOD_MAX_RSS_MB (300).
"""

import concurrent.futures
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ATTEMPTS = int(os.environ.get("FLOOD_ATTEMPTS", "200"))
ADDR = os.environ.get("FLOOD_ADDR", "127.0.0.1:3198")
MAX_RSS_MB = float(os.environ.get("FLOOD_MAX_RSS_MB", "300"))
TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(TARGET, "release", "tollgate"))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


def attempt(i):
    """One sign-in with a wrong password; returns the status code."""
    email = "owner@example.com" if i % 2 == 0 else f"nobody{i}@example.com"
    body = urllib.parse.urlencode({"email": email, "password": f"wrong-{i}"}).encode()
    req = urllib.request.Request(
        f"http://{ADDR}/api/auth/signin/password",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{ADDR}"},
        method="POST",
    )
    try:
        with NO_REDIRECTS.open(req, timeout=60) as res:
            return res.status
    except urllib.error.HTTPError as err:
        return err.code
    except Exception:  # noqa: BLE001 - a refused connection is a result here
        return "error"


def main():
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} not found: run `cargo build --release` first")
    tmp = tempfile.mkdtemp(prefix="tollgate-pwflood.")
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite://{tmp}/tollgate.db",
        LISTEN_ADDR=ADDR,
        SCHEDULER_ENABLED="false",
        RUST_LOG="warn",
    )
    subprocess.run([BIN, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [BIN, "user", "create", "--email", "owner@example.com", "--password-stdin"],
        env=env,
        input=b"correct horse battery staple\n",
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{ADDR}/healthz", timeout=1)
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
        idle = rss_mb(server.pid)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
            statuses = list(pool.map(attempt, range(ATTEMPTS)))
        elapsed = time.monotonic() - start
        done.set()
        sampler.join()
        counts = {}
        for s in statuses:
            counts[s] = counts.get(s, 0) + 1
        print(f"attempts: {ATTEMPTS} concurrent, answered in {elapsed:.2f} s")
        print(f"answers: {dict(sorted(counts.items(), key=str))}")
        print(f"RSS: {idle:.1f} MB idle, {peak[0]:.1f} MB peak")
        ok = peak[0] < MAX_RSS_MB and "error" not in counts
        print("result: " + ("bounded" if ok else f"NOT bounded (limit {MAX_RSS_MB} MB)"))
        sys.exit(0 if ok else 1)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
