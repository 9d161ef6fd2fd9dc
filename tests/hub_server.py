"""A tiny stand-in for the Hugging Face Hub: the endpoints huggingface_hub uses to create a repository
and a branch and to commit files, served on localhost so push tests never touch the network.

It checks the bearer token, refuses writes outside the token owner's namespace (403), and records
every repository, branch and committed file (decoded) for the test to inspect.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubState:
    token: str
    owner: str
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> {"private", "branches", "commits"}
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_commit_with: int | None = None
    # When set, every API call fails with this status and an error text that echoes the request's headers,
    # Authorization included, as a careless or hostile endpoint might: the token must still never be shown.
    echo_headers_with: int | None = None


class _Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass per server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code >= 400:
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.state.token}":
            self._send(401, {"error": "Invalid credentials in Authorization header"})
            return False
        return True

    def do_GET(self) -> None:
        self.state.requests.append(("GET", self.path))
        self._send(404, {"error": f"not served: {self.path}"})

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        self.state.requests.append(("POST", path))
        body = self._body()
        if path == "/api/validate-yaml":
            self._send(200, {"errors": [], "warnings": []})
            return
        if self.state.echo_headers_with:
            echoed = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
            self._send(self.state.echo_headers_with, {"error": f"request refused ({echoed})"})
            return
        if not self._authorized():
            return
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data.get('organization') or self.state.owner}/{data['name']}"
            if not repo_id.startswith(self.state.owner + "/"):
                self._send(403, {"error": "You don't have the rights to create a model under this namespace"})
                return
            if repo_id in self.state.repos:
                self._send(
                    409,
                    {
                        "error": "You already created this model repo",
                        "url": f"http://{self.headers['Host']}/{repo_id}",
                    },
                )
                return
            private = data.get("private", data.get("visibility") == "private")
            self.state.repos[repo_id] = {"private": bool(private), "branches": {"main"}, "commits": []}
            self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if not m:
            self._send(404, {"error": f"not served: {path}"})
            return
        repo_id, action, rev = m.group(1), m.group(2), m.group(3).replace("%2F", "/")
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._send(404, {"error": "Repository not found"})
            return
        if action == "branch":
            if rev in repo["branches"]:
                self._send(409, {"error": "Reference already exists"})
                return
            repo["branches"].add(rev)
            self._send(200, {})
        elif action == "preupload":
            files = json.loads(body)["files"]
            self._send(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                },
            )
        else:
            if self.state.fail_commit_with:
                self._send(
                    self.state.fail_commit_with, {"error": "A commit has happened since. Please refresh"}
                )
                return
            if rev not in repo["branches"]:
                self._send(404, {"error": f"Invalid rev id: {rev}"})
                return
            lines = [json.loads(x) for x in body.splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {
                x["value"]["path"]: base64.b64decode(x["value"]["content"])
                for x in lines
                if x["key"] == "file"
            }
            repo["commits"].append({"revision": rev, "summary": header["summary"], "files": files})
            self._send(
                200,
                {
                    "commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{'a' * 40}",
                    "commitOid": "a" * 40,
                },
            )


class LocalHub:
    """``with LocalHub(token, owner) as hub: HfApi(endpoint=hub.url)``; ``hub.state`` holds what arrived."""

    def __init__(self, token: str = "hf_test_token_123", owner: str = "alice"):
        self.state = HubState(token=token, owner=owner)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() waits for the serve loop's next poll: at the default 0.5 s every test paid half a second.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
