"""Notifications to a real local webhook and a real command; failures never raise."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from backout.environment import Environment
from backout.notify import Notifier, slack_payload


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_json_slack_and_command(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    event = {"kind": "level", "level": "RED", "summary": "RED: error rate 62% > 50% for 60s"}
    out = tmp_path / "event.json"
    cmd = f"{sys.executable} -c \"import sys; open('{out}', 'w').write(sys.stdin.read())\""
    try:
        assert Notifier(webhook_url=url, command=cmd).send(Environment(), event) == []
        assert Notifier(webhook_url=url, webhook_format="slack").send(Environment(), event) == []
    finally:
        srv.shutdown()
    assert Hook.received[0] == event
    assert Hook.received[1]["text"].startswith(":red_circle: backout: RED: error rate")
    assert json.loads(out.read_text()) == event


def test_failures_are_reported_not_raised() -> None:
    problems = Notifier(webhook_url="http://127.0.0.1:9/nothing", command="false",
                        timeout=1).send(Environment(), {"kind": "x"})
    assert len(problems) == 2 and "webhook failed" in problems[0]
    assert "exited 1" in problems[1]


def test_slack_payload_fields() -> None:
    payload = slack_payload({"level": "GREEN", "kind": "resolved", "incident": 3})
    assert payload["text"].startswith(":large_green_circle:")
    titles = {f["title"] for f in payload["attachments"][0]["fields"]}
    assert {"level", "kind", "incident"} <= titles
