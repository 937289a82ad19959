#!/usr/bin/env python3
"""Peer for overhear's benchmark: a socketserver.ThreadingTCPServer that prints every line each
client sends as "[N] line", numbering clients 1, 2, 3 in accept order, until SIGTERM."""
import itertools
import signal
import socketserver
import sys
import threading

numbers = itertools.count(1)
numbers_lock = threading.Lock()
out_lock = threading.Lock()
out = sys.stdout.buffer


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        with numbers_lock:
            prefix = b"[%d] " % next(numbers)
        pending = b""
        while True:
            chunk = self.request.recv(65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                text = b"".join(prefix + line.rstrip(b"\r") + b"\n" for line in lines)
                with out_lock:
                    out.write(text)
                    out.flush()
        if pending:
            with out_lock:
                out.write(prefix + pending + b"\n")
                out.flush()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    server = Server((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
