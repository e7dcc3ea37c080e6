"""A JSON request handler base for the test stand-ins: every method goes to ``_dispatch``; ``_send`` answers JSON."""

import json
from http.server import BaseHTTPRequestHandler


def send_json(handler: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
    """Answer ``handler``'s request with status ``code`` and the JSON body ``data``."""
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class JsonHandler(BaseHTTPRequestHandler):
    """Routes GET, POST, PATCH, PUT and DELETE to ``_dispatch(method)`` and answers with JSON bodies."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        send_json(self, code, json.dumps(body).encode())

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")
