"""What the example's two HTTP servers share: a threaded server on
127.0.0.1 that announces its port, and reading and answering JSON."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when the service's calls
    # arrive together, and a dropped SYN costs the client a second.
    request_queue_size = 256
    daemon_threads = True


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler with JSON answers and bodies of either framing."""

    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # One request per connection, as eventhost sends them: waiting for
        # a next request would only see the client hang up.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        """The request's body, sent with a length or chunked (a streamed
        body from a plugin has no length)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after the chunk
            if size == 0:
                return b"".join(chunks)

    def log_message(self, *args):
        pass  # one line per request would drown the example's output


def serve(handler_class, port):
    """Serves on 127.0.0.1:`port` (0: any free port) until interrupted,
    after printing `listening on http://127.0.0.1:<port>`."""
    server = Server(("127.0.0.1", port), handler_class)
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
