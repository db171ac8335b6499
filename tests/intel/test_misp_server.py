"""The MISP-server source through the real PyMISP client over HTTP. No MISP server (PHP + MySQL) can
run here, so a local stand-in answers MISP's REST endpoints with events built by PyMISP; what is
tested is Shoal's use of PyMISP (request, key, to_ids filter, parsing) and its failure handling."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pymisp import MISPEvent

from pipeline.intel import IntelError, load_source

KEY = "k" * 40


def _event() -> MISPEvent:
    event = MISPEvent()
    event.info = "Scanner campaign seen by a partner NREN"
    event.add_tag("tlp:amber")
    event.add_attribute("ip-dst", "203.0.113.50", to_ids=True)
    event.add_attribute("ip-src|port", "198.51.100.4|3389", to_ids=True)
    event.add_attribute("ip-dst", "192.0.2.99", to_ids=False)
    return event


class MispStandIn(BaseHTTPRequestHandler):
    searches: list[dict] = []
    keys: list[str] = []
    fail = False

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if "users/view/me" in self.path:  # PyMISP asks who the key belongs to when it connects
            self._json(200, {"User": {"id": "7", "email": "soc@nren.example"}, "Role": {"id": "3", "name": "User"},
                             "UserSetting": []})  # fmt: skip
        else:
            self._json(200, {"version": "2.5.0"} if "Version" in self.path else {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        type(self).keys.append(self.headers.get("Authorization", ""))
        if type(self).fail:
            self._json(500, {"errors": "Internal error"})
            return
        assert self.path.rstrip("/").endswith("events/restSearch")
        type(self).searches.append(body)
        event = _event()
        if body.get("to_ids") in (True, 1, "1"):
            event.attributes = [a for a in event.attributes if a.to_ids]
        self._json(200, {"response": [{"Event": json.loads(event.to_json())}]})

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def misp_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MispStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    MispStandIn.searches, MispStandIn.keys, MispStandIn.fail = [], [], False
    monkeypatch.setenv("SHOAL_MISP_KEY", KEY)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_restsearch_through_pymisp_loads_to_ids_attributes(misp_url: str) -> None:
    load = load_source(f"misp:{misp_url}")
    assert MispStandIn.keys == [KEY] and MispStandIn.searches[0]["to_ids"] in (True, 1, "1")
    assert sorted(i.value for i in load.indicators) == [
        "ip-dst: 203.0.113.50",
        "ip-src|port: 198.51.100.4|3389",
    ]
    assert {i.tlp for i in load.indicators} == {"amber"}
    pair = next(i for i in load.indicators if "|" in i.value)
    assert pair.conditions[0].side == "src" and pair.conditions[0].src_ports == frozenset({3389})


def test_server_errors_and_outages_are_intel_errors_not_crashes(misp_url: str) -> None:
    MispStandIn.fail = True
    with pytest.raises(IntelError, match=r"127\.0\.0\.1"):
        load_source(f"misp:{misp_url}")
    with pytest.raises(IntelError, match=r"ConnectionError|Connection refused|Unable to connect"):
        load_source("misp:http://127.0.0.1:1")
