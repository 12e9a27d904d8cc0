#!/usr/bin/env python3
"""Connection flood: opens N idle sockets against a running `tollgate serve` (release build) and
checks that /healthz still answers, that the server closes the idle sockets, and that the
process's open file descriptors drop back after IDLE_CONNECTION_TIMEOUT_MS. Prints the numbers.

Run from the repository root after `cargo build --release`:

    python3 bench/conn-flood.py                # 2,000 sockets, 5 s idle timeout
    FLOOD_SOCKETS=4000 FLOOD_IDLE_MS=3000 python3 bench/conn-flood.py

Knobs (environment): TOLLGATE_BIN (default $CARGO_TARGET_DIR/release/tollgate, else
target/release/tollgate), FLOOD_SOCKETS (2000), FLOOD_IDLE_MS (5000), FLOOD_ADDR (127.0.0.1:3199).
The server runs on a fresh SQLite file with default settings except the idle timeout. A third
of the sockets send nothing, a third only the HTTP/2 preface and an empty SETTINGS frame, a
third half a request line. Exit status 0 when /healthz answered during the flood and the fd
count came back.
"""

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SOCKETS = int(os.environ.get("FLOOD_SOCKETS", "2000"))
IDLE_MS = int(os.environ.get("FLOOD_IDLE_MS", "5000"))
ADDR = os.environ.get("FLOOD_ADDR", "127.0.0.1:3199")
HOST, PORT = ADDR.rsplit(":", 1)
PORT = int(PORT)
TARGET = os.environ.get("CARGO_TARGET_DIR", "target")
BIN = os.environ.get("TOLLGATE_BIN", os.path.join(TARGET, "release", "tollgate"))

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
PARTIAL_LINE = b"GET /healthz HT"


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def healthz(timeout=5.0):
    """Status of GET /healthz on a new connection, or the error, and the seconds it took."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{ADDR}/healthz", timeout=timeout) as res:
            return res.status, time.monotonic() - start
    except Exception as err:  # noqa: BLE001 - any failure is a result here
        return repr(err), time.monotonic() - start


def wait_until(check, seconds):
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.1)
    return False


def closed_by_server(sock):
    """True when the server has closed `sock` (EOF or reset); never blocks."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def main():
    if not os.path.exists(BIN):
        sys.exit(f"no release binary at {BIN}: run `cargo build --release` (or set TOLLGATE_BIN)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SOCKETS + 200
    if soft < need:
        if hard < need:
            sys.exit(f"ulimit -n is {hard}: too low for {SOCKETS} sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    # The server inherits this limit: it must be the connections, not the limit, that are tested.
    server_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    work = tempfile.mkdtemp(prefix="tollgate-flood.")
    env = dict(os.environ)
    for key in ("REDIS_URL", "PUBLIC_URL", "DATABASE_URL"):
        env.pop(key, None)
    env.update(
        DATABASE_URL=f"sqlite://{work}/tollgate.db",
        LISTEN_ADDR=ADDR,
        IDLE_CONNECTION_TIMEOUT_MS=str(IDLE_MS),
        SCHEDULER_ENABLED="false",
        RUST_LOG="warn",
        NEXTAUTH_SECRET="flood-secret-flood-secret-flood-secret-01",
    )
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([BIN, "serve"], env=env, stdout=log, stderr=log)
    socks = []
    ok = True
    try:
        if not wait_until(lambda: healthz(1.0)[0] == 200, 60):
            sys.exit(f"tollgate serve did not start; log in {work}/serve.log")
        base = fds(server.pid)
        print(f"tollgate serve pid {server.pid}: {base} open fds at rest (fd limit {server_limit})")

        start = time.monotonic()
        for i in range(SOCKETS):
            s = socket.create_connection((HOST, PORT))
            if i % 3 == 1:
                s.sendall(PREFACE)
            elif i % 3 == 2:
                s.sendall(PARTIAL_LINE)
            socks.append(s)
        opened = time.monotonic() - start
        wait_until(lambda: fds(server.pid) >= base + SOCKETS * 0.95, 10)
        peak = fds(server.pid)
        status, took = healthz()
        print(f"opened {SOCKETS} idle sockets in {opened:.2f} s; server fds {peak}")
        print(f"/healthz during the flood: {status} in {took * 1000:.0f} ms")
        ok &= status == 200

        start = time.monotonic()
        back = wait_until(lambda: fds(server.pid) <= base + 5, IDLE_MS / 1000 + 30)
        after = fds(server.pid)
        dropped = time.monotonic() - start
        closed = sum(closed_by_server(s) for s in socks)
        print(
            f"server fds back to {after} (at rest {base}) {dropped:.1f} s after the flood"
            f" (idle timeout {IDLE_MS / 1000:.1f} s): {'yes' if back else 'NO'}"
        )
        print(f"sockets closed by the server: {closed} of {SOCKETS}")
        ok &= back and closed == SOCKETS
        status, took = healthz()
        print(f"/healthz after: {status} in {took * 1000:.0f} ms")
        ok &= status == 200
    finally:
        for s in socks:
            s.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            ok = False
            print("tollgate serve ignored SIGTERM for 30 s")
    print("RESULT:", "ok" if ok else f"FAILED (log in {work}/serve.log)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
