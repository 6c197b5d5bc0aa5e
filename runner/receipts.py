"""Receipts: the vendor's delivery webhooks, recorded in the ledger.

Acceptance by the API only means "queued"; what reached handsets arrives later as
`deliveryInfoNotification` posts to notifyUrl. `campaign receipts listen` is that
webhook endpoint: it stores each receipt against the destination it belongs to, so
`campaign status` can say what was delivered, not just what was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import vendor
from .ledger import Ledger

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ReceiptTally:
    matched: int
    unmatched: int


def parse_receipts(body: bytes) -> list[Mapping[str, Any]]:
    """One envelope, or a list of them; anything else is a ValueError with a reason."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"receipt is not JSON: {error}") from None
    items = data if isinstance(data, list) else [data]
    receipts: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("receipt is not a JSON object")
        inner = item.get(vendor.RECEIPT_ENVELOPE, item)
        if not isinstance(inner, dict) or not isinstance(inner.get("deliveryInfo"), dict):
            raise ValueError(f"receipt has no {vendor.RECEIPT_ENVELOPE}.deliveryInfo object")
        receipts.append(item)
    return receipts


def record_receipts(ledger: Ledger, receipts: Iterable[Mapping[str, Any]], campaign_id: str | None = None) -> ReceiptTally:
    matched = unmatched = 0
    for receipt in receipts:
        if ledger.record_receipt(campaign_id, receipt):
            matched += 1
        else:
            unmatched += 1
    return ReceiptTally(matched, unmatched)


class ReceiptServer:
    """A webhook endpoint: every POST body is parsed and stored; 400 when it is not a receipt."""

    def __init__(self, ledger: Ledger, host: str = "127.0.0.1", port: int = 0,
                 on_receipt: Callable[[ReceiptTally], None] | None = None) -> None:
        self.ledger = ledger
        self.on_receipt = on_receipt
        handler = _handler_for(self)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> str:
        self.thread = threading.Thread(target=self.server.serve_forever, name="receipts", daemon=True)
        self.thread.start()
        return self.url

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            receipts = parse_receipts(body)
        except ValueError as error:
            return 400, {"error": str(error)}
        tally = record_receipts(self.ledger, receipts)
        if self.on_receipt is not None:
            self.on_receipt(tally)
        return 200, {"matched": tally.matched, "unmatched": tally.unmatched}


def _handler_for(owner: ReceiptServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: receipts hold phone numbers
            return

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._answer(400 if length < 0 else 413, {"error": "bad or too large Content-Length"})
                return
            status, payload = owner.handle(self.rfile.read(length))
            self._answer(status, payload)

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def listen(state: str | Path, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve receipts into the ledger at `state` until interrupted."""
    with Ledger.open(state) as ledger:
        server = ReceiptServer(ledger, host, port)
        ready(server.url)
        try:
            server.serve_forever()
        finally:
            server.server.server_close()
