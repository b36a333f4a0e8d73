"""A local HTTP server (127.0.0.1 only) that serves weight files the way a download host does,
for the model-manager tests: ``{path: (bytes, mode)}`` with mode "ok" or "truncate" (the
connection drops halfway); other paths answer 404."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading


def _handler(files: dict) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):  # keep test output quiet
            pass

        def do_GET(self):
            entry = files.get(self.path)
            if entry is None:
                self.send_error(404, "Not Found")
                return
            data, mode = entry
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == "truncate":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            for i in range(0, len(data), 1 << 20):
                self.wfile.write(data[i:i + (1 << 20)])

    return Handler


@contextlib.contextmanager
def serve_files():
    """Yields ``(base_url, files)``; put ``files[path] = (bytes, mode)`` to serve them."""
    files: dict = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()
