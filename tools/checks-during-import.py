#!/usr/bin/env python3
"""Consent-check latency at an office while it imports: what an operator waits for meanwhile.

    tools/checks-during-import.py CONSENTD CONSENTCTL RECORDS [alone]

Starts `CONSENTD demo --keep` (seven offices on loopback), then at office `de`: one connection
to its control socket asks `consent check` every 2 ms while `CONSENTCTL import` sends RECORDS
consent grants, and for 2 s after. Prints the import's time and the checks' p50/p90/p99/max
during it and after it (idle). With `alone`, the six other offices are stopped first, so `de`
imports with no peer to replicate to; without it, all seven share this machine's cores, as no
deployment would. Stops the offices and removes the network at the end.

`consentd bench` has no such row (issue 7 names none); BENCHMARKS.md (twentieth session) has
the figures this printed. Not run by CI.
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

POLL_INTERVAL_S = 0.002
IDLE_S = 2.0


def call(conn, request):
    """One request over the control socket: 4-byte big-endian length, then JSON; same back."""
    body = json.dumps({"v": 1, "request": request}).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)

    def read(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("control socket closed")
            data += chunk
        return data

    (length,) = struct.unpack(">I", read(4))
    return read(length)


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1e3


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    consentd, consentctl, records = sys.argv[1], sys.argv[2], int(sys.argv[3])
    alone = sys.argv[4:] == ["alone"]

    demo = subprocess.run([consentd, "demo", "--keep"], capture_output=True, text=True, timeout=300)
    de = re.search(r"de: consentctl --socket (\S+/de/control\.sock) status\s+\(pid (\d+)", demo.stdout)
    kill = re.search(r"stop them:\s+kill ([0-9 ]+)", demo.stdout)
    if demo.returncode != 0 or not de or not kill:
        sys.exit(f"error: consentd demo --keep failed ({demo.returncode}): {demo.stderr[-500:]}")
    sock, de_pid = de.group(1), int(de.group(2))
    pids = [int(p) for p in kill.group(1).split()]
    network = sock.rsplit("/de/", 1)[0]
    try:
        if alone:
            for pid in pids:
                if pid != de_pid:
                    os.kill(pid, signal.SIGTERM)
            time.sleep(3)
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for i in range(records):
                f.write(json.dumps({
                    "op": "consent.grant", "subject": f"person{i}@example.de",
                    "purpose": "marketing", "basis": "consent", "service": "sms",
                    "evidence": "web form v3",
                }) + "\n")
            grants = f.name
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(sock)
        check = {"op": "consent.check", "subject": "anna@example.de", "purpose": "marketing"}
        for _ in range(200):  # warm
            call(conn, check)

        stop = threading.Event()

        def poll(into):
            while not stop.is_set():
                started = time.perf_counter()
                call(conn, check)
                into.append(time.perf_counter() - started)
                time.sleep(POLL_INTERVAL_S)

        during, idle = [], []
        poller = threading.Thread(target=poll, args=(during,))
        poller.start()
        started = time.time()
        imported = subprocess.run([consentctl, "--socket", sock, "import", "--file", grants, "--json"],
                                  capture_output=True, text=True)
        took = time.time() - started
        stop.set()
        poller.join()
        os.unlink(grants)
        if imported.returncode != 0:
            sys.exit(f"error: import failed: {imported.stderr.strip()}")
        stop.clear()
        poller = threading.Thread(target=poll, args=(idle,))
        poller.start()
        time.sleep(IDLE_S)
        stop.set()
        poller.join()
        print(f"import of {records} at de{' (alone)' if alone else ''}: {took:.2f} s; "
              f"checks during it: {len(during)}, p50 {percentile(during, .5):.3f}, "
              f"p90 {percentile(during, .9):.3f}, p99 {percentile(during, .99):.3f}, "
              f"max {max(during) * 1e3:.1f} ms; after it: p50 {percentile(idle, .5):.3f}, "
              f"p99 {percentile(idle, .99):.3f} ms")
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(2)
        subprocess.run(["rm", "-rf", network])


if __name__ == "__main__":
    main()
