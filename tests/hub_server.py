"""A loopback stand-in for the Hugging Face Hub's HTTP API, just enough for an upload.

``huggingface_hub`` 2.x pushes a model folder (``ModelHubMixin.push_to_hub`` ->
``HfApi.create_repo`` + ``HfApi.upload_folder`` -> ``create_commit``) with these requests,
which are the only endpoints this server covers:

- ``POST /api/repos/create`` (``create_repo``): records the repo; answers 200 with its ``url``,
  or 409 (also with the ``url``) if it exists, which ``exist_ok=True`` accepts.
- ``POST /api/validate-yaml`` (``create_commit`` checks a README.md's metadata): parses the YAML
  header with ``yaml.safe_load``; 200 with no errors, or 400 with the parse error.
- ``POST /api/models/{org}/{name}/preupload/{revision}`` (``_fetch_upload_modes``): answers
  ``uploadMode: "regular"`` and ``shouldIgnore: false`` for every file, so no LFS or Xet
  upload follows and the bytes travel base64-encoded in the commit.
- ``POST /api/models/{org}/{name}/commit/{revision}`` (``_send_commit``): reads the NDJSON
  payload (a ``header`` line, then ``file`` lines with base64 ``content``), stores the files
  and answers with ``commitUrl``/``commitOid``.

- ``GET /api/agent-harnesses`` (best-effort user-agent telemetry, fetched once per process):
  answered 404, which ``huggingface_hub`` reads as "no registry" and caches nothing.

Every other request gets a 404 and is listed in ``unhandled``, so a test can assert that the
upload needed nothing else. Uploads stay on the plain commit API only with Xet off
(``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``; the ``hf_xet`` package is installed
here and would otherwise take the pipelined Xet path).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

__all__ = ["FakeHub", "serve_fake_hub"]

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_PREUPLOAD = re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/?]+)$")
_COMMIT = re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/?]+)$")


@dataclass
class FakeHub:
    """What the server received: repos created, files committed, every request seen."""

    endpoint: str = ""
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo_id -> path -> bytes
    commits: list[dict[str, Any]] = field(default_factory=list)  # header + paths per commit
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization
    unhandled: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet under pytest
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/api/agent-harnesses":
                with hub.lock:
                    hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
                return self._reply(404, {"error": "no agent harness registry here"})
            self._unhandled()

        def do_PUT(self) -> None:
            self._unhandled()

        def do_DELETE(self) -> None:
            self._unhandled()

        def _unhandled(self) -> None:
            self._body()
            with hub.lock:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                hub.unhandled.append((self.command, self.path))
            self._reply(404, {"error": f"the fake hub does not serve {self.command} {self.path}"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            body = self._body()
            with hub.lock:
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
            if path == "/api/repos/create":
                return self._create_repo(json.loads(body))
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            if m := _PREUPLOAD.match(path):
                return self._preupload(m["repo"], json.loads(body))
            if m := _COMMIT.match(path):
                return self._commit(m["repo"], body)
            with hub.lock:
                hub.unhandled.append(("POST", self.path))
            self._reply(404, {"error": f"the fake hub does not serve POST {self.path}"})

        def _create_repo(self, payload: dict[str, Any]) -> None:
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            url = f"{hub.endpoint}/{repo_id}"
            with hub.lock:
                if repo_id in hub.repos:  # the Hub's 409 carries the url too; create_repo reads it
                    return self._reply(409, {"error": "You already created this model repo", "url": url})
                hub.repos[repo_id] = {}
            self._reply(200, {"url": url, "name": repo_id, "id": repo_id})

        def _validate_yaml(self, payload: dict[str, Any]) -> None:
            content: str = payload["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
            try:
                yaml.safe_load(match[1] if match else "")
            except yaml.YAMLError as err:
                return self._reply(400, {"errors": [{"message": str(err)}], "warnings": []})
            warnings = [] if match else [{"message": "empty or missing yaml metadata in repo card"}]
            self._reply(200, {"errors": [], "warnings": warnings})

        def _preupload(self, repo_id: str, payload: dict[str, Any]) -> None:
            if repo_id not in hub.repos:
                return self._reply(404, {"error": "Repository not found"})
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in payload["files"]]
            self._reply(200, {"files": files, "commitOid": "0" * 40})

        def _commit(self, repo_id: str, body: bytes) -> None:
            if repo_id not in hub.repos:
                return self._reply(404, {"error": "Repository not found"})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files: dict[str, bytes] = {}
            for line in lines:
                if line["key"] == "file":
                    value = line["value"]
                    if value.get("encoding") != "base64":
                        return self._reply(400, {"error": f"unsupported encoding {value.get('encoding')!r}"})
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] != "header":  # lfsFile, deletedFile, ... : not part of this stand-in
                    return self._reply(400, {"error": f"the fake hub does not handle {line['key']!r} operations"})
            oid = hashlib.sha1(body).hexdigest()
            with hub.lock:
                hub.repos[repo_id].update(files)
                hub.commits.append({"repo_id": repo_id, "header": header, "paths": sorted(files), "oid": oid})
            self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True})

    return Handler


@contextmanager
def serve_fake_hub() -> Iterator[FakeHub]:
    """Run a :class:`FakeHub` on 127.0.0.1 at a free port for the duration of the block."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
