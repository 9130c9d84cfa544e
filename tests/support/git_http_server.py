#!/usr/bin/env python3
"""A small HTTP(S) front for `git http-backend`, for halite's tests and bench.

    git_http_server.py ROOT [--tls CERT KEY] [--auth USER:PASSWORD]

Serves the bare repositories under ROOT over git's smart HTTP protocol on a
free 127.0.0.1 port, optionally over TLS and behind HTTP basic auth, and
prints `READY <port>` once it listens. Request bodies may be chunked (gix
streams them) and gzip-encoded (git does); both are passed to the CGI as
git expects. It runs until killed.
"""

import base64
import http.server
import os
import ssl
import subprocess
import sys


def parse_args(argv):
    root, tls, auth = None, None, None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--tls":
            tls = (argv[i + 1], argv[i + 2])
            i += 3
        elif arg == "--auth":
            auth = argv[i + 1]
            i += 2
        else:
            root = arg
            i += 1
    if root is None:
        sys.exit("usage: git_http_server.py ROOT [--tls CERT KEY] [--auth USER:PASSWORD]")
    return root, tls, auth


ROOT, TLS, AUTH = parse_args(sys.argv[1:])
EXPECTED = "Basic " + base64.b64encode(AUTH.encode()).decode() if AUTH else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("git-http: " + (fmt % args) + "\n")

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, headers, body):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def serve(self):
        body = self.read_body()
        if EXPECTED and self.headers.get("Authorization") != EXPECTED:
            self.reply(401, [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n")
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": AUTH.split(":")[0] if AUTH else "",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        for header, var in [("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")]:
            if self.headers.get(header):
                env[var] = self.headers[header]
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        if done.returncode != 0 and not done.stdout:
            sys.stderr.write(done.stderr.decode(errors="replace"))
            self.reply(500, [], b"git http-backend failed\n")
            return
        self.reply(status, headers, payload)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if TLS:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS[0], TLS[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("READY", server.server_address[1], flush=True)
server.serve_forever()
