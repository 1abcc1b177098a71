"""harborctl test bed: a stand-in for a Harbor service harborctl never talks to directly.

It only has to be a live process with an open TCP port, so that Harbor's health checks
(TCP/HTTP probes from harbor-core) see it up while it runs and down when it is stopped.
Usage: python3 stub.py NAME PORT [PORT ...]
"""

import signal
import socketserver
import sys
import threading

REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
         b"Connection: close\r\n\r\nok\n")


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(2)
        try:
            self.request.recv(4096)
            self.request.sendall(REPLY)
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    # PID 1 in a container has no default SIGTERM action: exit promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
    servers = [Server(("0.0.0.0", port), Handler) for port in ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"{name} (harborctl test-bed stand-in) listening on {ports}", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
