"""A local HTTP server standing in for MISP (which cannot run here): every request body is checked
against MISP's published OpenAPI description (tests/share/data/misp-openapi.yaml, see its README),
and the server keeps state the way MISP does for the endpoints Shoal uses (events by uuid, attributes
edited by uuid, sightings appended to attributes), so a duplicate shows.

Bodies wrapped in ``{"Event": ...}`` (as PyMISP sends them; MISP takes both) are checked unwrapped,
and each of an event's attributes and tags against the spec's ``Attribute`` and ``Tag`` schemas
(the event schema itself does not describe them). Where the spec says PUT for an edit, POST is
accepted too: MISP routes both, and PyMISP, MISP's own client, uses POST.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pymisp
import yaml

SPEC_PATH = Path(__file__).parent / "data" / "misp-openapi.yaml"
KEY = "shoal-test-key-0123456789abcdef0123456789ab"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema: null added to the type."""
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


class Spec:
    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.doc = _nullable(yaml.safe_load(path.read_text(encoding="utf-8")))
        self.version = self.doc["info"]["version"]
        self.routes = []
        for template, ops in self.doc["paths"].items():
            pattern = (
                "^"
                + re.sub(r"\{[^}]+\}", "[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
                + "$"
            )
            self.routes.append((re.compile(pattern), template, ops))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template, ops in self.routes:
            if pattern.match(path):
                verb = "get" if method == "HEAD" else method.lower()  # HEAD: GET without the body
                op = ops.get(verb) or (ops.get("put") if method == "POST" else None)
                return (template, op) if op else None
        return None

    def validator(self, pointer: str) -> jsonschema.Draft4Validator:
        schema = {"$ref": pointer, "components": self.doc["components"]}
        return jsonschema.Draft4Validator(schema)

    def body_pointer(self, op: dict[str, Any]) -> str | None:
        ref = (op.get("requestBody") or {}).get("$ref")
        if not ref:
            return None
        name = ref.rsplit("/", 1)[1]
        if "application/json" not in self.doc["components"]["requestBodies"][name]["content"]:
            return None
        return f"#/components/requestBodies/{name}/content/application~1json/schema"

    def errors(self, method: str, path: str, body: Any) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path}: not in MISP's API description"]
        template, op = found
        pointer = self.body_pointer(op)
        if pointer is None:
            return [] if body is None else [f"{method} {template}: takes no JSON body"]
        inner = body["Event"] if isinstance(body, dict) and set(body) == {"Event"} else body
        out = [
            f"{template}: {e.message} at {list(e.absolute_path)}"
            for e in self.validator(pointer).iter_errors(inner)
        ]
        if isinstance(inner, dict):
            for attr in inner.get("Attribute") or ():
                out += [f"{template} Attribute: {e.message}" for e in self.validator("#/components/schemas/Attribute").iter_errors(
                    {k: v for k, v in attr.items() if k != "Tag"})]  # fmt: skip
                for tag in attr.get("Tag") or ():
                    out += [
                        f"{template} Attribute Tag: {e.message}"
                        for e in self.validator("#/components/schemas/TagNoId").iter_errors(tag)
                    ]
            for tag in inner.get("Tag") or ():
                out += [
                    f"{template} Tag: {e.message}"
                    for e in self.validator("#/components/schemas/TagNoId").iter_errors(tag)
                ]
        return out


@dataclass
class MispState:
    attributes: list[dict[str, Any]] = field(default_factory=list)
    """Attributes of the feed's events (uuid, value, type), each with its ``Sighting`` list."""
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    down: bool = False

    def sightings(self) -> list[dict[str, Any]]:
        return [dict(s, attribute_uuid=a["uuid"]) for a in self.attributes for s in a["Sighting"]]


class MispServer:
    def __init__(self, attributes: list[dict[str, Any]] | None = None) -> None:
        self.spec = Spec()
        self.state = MispState([dict(a, Sighting=[]) for a in attributes or []])
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.lock = threading.Lock()

    def __enter__(self) -> MispServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # The endpoints, as MISP answers them.
    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        st = self.state
        if path == "/servers/getPyMISPVersion":
            return 200, {"version": pymisp.__version__}
        if path == "/servers/getVersion":
            return 200, {"version": "2.4.198", "pymisp_recommended_version": pymisp.__version__, "perm_sync": True,
                         "perm_sighting": True, "perm_galaxy_editor": False, "request_encoding": ["gzip"],
                         "filter_sightings": True}  # fmt: skip
        if path == "/users/view/me":
            return 200, {"User": {"id": "7", "org_id": "2", "email": "shoal@example.org", "role_id": "5"},
                         "Role": {"id": "5", "name": "Sync user", "perm_sighting": True}, "UserSetting": []}  # fmt: skip
        if path == "/attributes/describeTypes":
            local = json.loads((Path(pymisp.__file__).parent / "data" / "describeTypes.json").read_text())
            return 200, local
        if m := re.fullmatch(r"/events/view/([^/]+)", path):
            event = st.events.get(m.group(1))
            return (
                (200, {"Event": event})
                if event
                else (404, {"name": "Invalid event", "message": "Invalid event", "url": path})
            )
        if path == "/events/add":
            event = copy.deepcopy(body.get("Event", body))
            if event["uuid"] in st.events:
                return 403, {"name": "Could not add Event", "message": "Event already exists", "url": path,
                             "errors": {"Event": ["An event with this uuid already exists."]}}  # fmt: skip
            event["id"] = str(len(st.events) + 1)
            st.events[event["uuid"]] = event
            return 200, {"Event": event}
        if m := re.fullmatch(r"/events/edit/([^/]+)", path):
            event = st.events.get(m.group(1))
            if event is None:
                return 404, {"name": "Invalid event", "message": "Invalid event", "url": path}
            new = body.get("Event", body)
            held = {a["uuid"]: a for a in event.get("Attribute", [])}
            for attr in new.get("Attribute", []):
                held[attr["uuid"]] = attr  # MISP's edit: attributes matched by uuid, others kept
            event.update({k: v for k, v in new.items() if k != "Attribute"}, Attribute=list(held.values()))
            return 200, {"Event": event}
        if path == "/attributes/restSearch":
            uuids, values = _as_list(body.get("uuid")), _as_list(body.get("value"))
            found = [a for a in st.attributes if a["uuid"] in uuids or a["value"] in values]
            with_sightings = str(body.get("includeSightings")) in ("1", "True", "true")
            return 200, {"response": {"Attribute": [a if with_sightings else {k: v for k, v in a.items() if k != "Sighting"}
                                                    for a in found]}}  # fmt: skip
        if path == "/sightings/add":
            targets = ([a for a in st.attributes if a["uuid"] == body["uuid"]] if "uuid" in body
                       else [a for a in st.attributes if a["value"] in body.get("values", [])])  # fmt: skip
            if not targets:
                return 200, {
                    "saved": False,
                    "errors": "No valid attributes found that match the sighting criteria.",
                }
            for attr in targets:
                attr["Sighting"].append({"id": str(len(st.sightings()) + 1), "type": str(body.get("type", "0")),
                                         "source": body.get("source", ""), "date_sighting": str(body["timestamp"]),
                                         "attribute_id": attr.get("id", "1")})  # fmt: skip
            return 200, {"saved": True, "success": True, "name": f"{len(targets)} sightings successfully added.",
                         "message": f"{len(targets)} sightings successfully added.", "url": "/sightings/add"}  # fmt: skip
        return 404, {"name": "Not found", "message": f"{path} is not served by this test server", "url": path}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0].removesuffix(".json")
                with server.lock:
                    st = server.state
                    if st.down:
                        status, answer = 503, {"name": "Service unavailable", "message": "down", "url": path}
                    elif self.headers.get("Authorization") != KEY:
                        status, answer = 403, {"name": "Authentication failed.", "message": "Authentication failed.",
                                               "url": path}  # fmt: skip
                    else:
                        body = json.loads(raw) if raw else None
                        st.requests.append((method, path, body))
                        known_handshake = method == "GET" and path == "/users/view/me"
                        if not known_handshake:
                            st.errors += server.spec.errors(method, path, body)
                        status, answer = server.answer(method, path, body)
                data = b"" if method == "HEAD" else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

        return Handler


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
