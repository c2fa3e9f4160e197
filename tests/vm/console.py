#!/usr/bin/env python3
"""Talks to the test guest's serial console (a unix socket QEMU listens on).

usage: console.py SOCK [--send LINE] [--expect REGEX] [--timeout S]

Connects (retrying until the socket exists and accepts, within the timeout), types LINE (after
a newline that ends any half-typed line), and reads the console until REGEX matches a line;
prints the match's first group (or the whole match) and exits 0. Exit 1 on timeout, with what
was read on stderr. The connection stays open until then: the emulated UART takes typed bytes
only as fast as the guest drains its FIFO, and bytes still unread when a client hangs up are
lost.
"""
import argparse
import re
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sock")
    ap.add_argument("--send")
    ap.add_argument("--expect")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    end = time.monotonic() + a.timeout
    s = None
    while s is None:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(a.sock)
        except OSError:
            s.close()
            s = None
            if time.monotonic() > end:
                print(f"console: cannot connect to {a.sock}", file=sys.stderr)
                return 1
            time.sleep(0.1)
    s.settimeout(0.1)
    if a.send is not None:
        s.sendall(b"\n" + a.send.encode() + b"\n")
    rx = re.compile(a.expect) if a.expect else None
    buf = ""
    while True:
        try:
            data = s.recv(65536)
            if not data:
                break
            buf += data.decode(errors="replace")
        except socket.timeout:
            pass
        if rx:
            for line in buf.splitlines()[:-1] if not buf.endswith("\n") else buf.splitlines():
                m = rx.search(line)
                if m:
                    print(m.group(1) if m.groups() else m.group(0))
                    return 0
        elif a.send is not None and time.monotonic() > end - a.timeout + 1.0:
            return 0  # no expectation: give the UART a second to take the line
        if time.monotonic() > end:
            break
    print(f"console: no line matching {a.expect!r} within {a.timeout} s; read:\n{buf[-2000:]}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
