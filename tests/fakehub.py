"""A small in-memory Hugging Face Hub for tests: enough of the HTTP API for `huggingface_hub` and `transformers`.

No real Hub is reachable in CI, and no PyPI package provides a self-hosted Hub that accepts uploads, so the tests
publish to this stdlib server on 127.0.0.1 (random port). It implements the endpoints that `create_repo`,
`create_commit`/`upload_folder`, `create_branch`, `model_info`, `list_repo_tree`, `get_paths_info`,
`list_repo_refs`, `hf_hub_download` and `AutoModelForCausalLM.from_pretrained` call, with the Hub's error
conventions (``X-Error-Code`` headers, 401 for a bad token, 404 ``EntryNotFound``, 412 for a stale
``parentCommit``).

Uploads take the two paths of the real Hub without `hf_xet`. The preupload answer says ``"lfs"`` for paths that the
repository's ``.gitattributes`` marks ``filter=lfs`` (``*.safetensors`` from the first commit on, as on the Hub)
and for files over 10 MB; their bytes go through the LFS batch API (``/{repo}.git/info/lfs/objects/batch``), a PUT
to the returned ``href`` and a verify call, and the commit names them as ``lfsFile`` by sha256. Other files travel
base64 inside the NDJSON commit. The tree reports LFS files as the Hub does (``lfs.oid`` = sha256, ``oid`` = the
pointer's git id). ``hub.requests`` records ``"METHOD path"`` of every request and ``hub.commits_received`` the
operation keys of every commit, so tests can assert which path a file took.

Commits are atomic, as on the Hub: a commit whose body does not arrive whole changes nothing. Faults can be injected
to test retries: ``hub.faults.append("drop_request")`` closes the connection after reading half of the next commit
body; ``"drop_response"`` applies the next commit and then closes the connection without answering (the client
cannot tell whether it landed). ``hub.drop_connections = n`` closes the next ``n`` connections of any kind without
an answer (a network that drops the first calls).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

#: Files above this size go through LFS whatever ``.gitattributes`` says (the Hub's limit for regular files).
LFS_THRESHOLD = 10 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    date: str
    lfs: frozenset[str] = frozenset()  # paths stored through LFS

    def is_lfs_path(self, path: str, size: int) -> bool:
        """Whether a new file at ``path`` goes through LFS: ``.gitattributes`` patterns with ``filter=lfs``, or size."""
        patterns = [
            line.split()[0]
            for line in self.files.get(".gitattributes", b"").decode().splitlines()
            if "filter=lfs" in line
        ]
        name = path.rsplit("/", 1)[-1]
        return size > LFS_THRESHOLD or any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class FakeHub:
    """The server state plus the thread that serves it. Use as a context manager; ``endpoint`` is its base URL."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = dict(tokens or {"hf_test_write_token": "tester"})  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.faults: list[str] = []
        self.drop_connections = 0
        self.commit_requests = 0
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, as uploaded through the LFS batch API
        self.requests: list[str] = []  # "METHOD /path" of every request, in order
        self.commits_received: list[
            list[str]
        ] = []  # operation keys ("file", "lfsFile", "deletedFile") per commit
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state helpers used by the handler and by tests ------------------------------------------------------
    def new_commit(
        self, repo: Repo, branch: str, files: dict[str, bytes], title: str, lfs: frozenset[str] = frozenset()
    ) -> Commit:
        parent = repo.branches.get(branch)
        digest = hashlib.sha1(f"{repo.repo_id}{parent}{title}{time.time_ns()}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha1(files[path]).encode())
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(digest.hexdigest(), parent, files, title, date, frozenset(lfs) & set(files))
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep pytest output clean
            pass

        # -- plumbing ---------------------------------------------------------------------------------------
        def _send(
            self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
        ):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict | None = None):
            self._send(status, json.dumps(payload).encode(), headers)

        def _error(self, status: int, message: str, code: str | None = None):
            self._json(
                status,
                {"error": message},
                {"X-Error-Code": code, "X-Error-Message": message} if code else None,
            )

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _dropped(self) -> bool:
            """Record the request; close the connection without answering if a dropped connection is pending."""
            with hub.lock:
                hub.requests.append(f"{self.command} {urlsplit(self.path).path}")
                drop = hub.drop_connections > 0
                hub.drop_connections -= drop
            if drop:
                self.close_connection = True
                self.connection.shutdown(2)
            return drop

        def _user(self) -> tuple[bool, str | None]:
            """(token acceptable, user): no token is acceptable for public reads; a wrong token never is."""
            header = self.headers.get("Authorization", "")
            if not header:
                return True, None
            token = header.removeprefix("Bearer ").strip()
            user = hub.tokens.get(token)
            return user is not None, user

        def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
            ok, user = self._user()
            if not ok:
                self._error(401, "Invalid credentials in Authorization header", "RepoNotFound")
                return None
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and user is None):
                self._error(
                    404 if user else 401, f"Repository Not Found for url: {self.path}.", "RepoNotFound"
                )
                return None
            if write and user != repo.owner and not repo_id.startswith(f"{user}/"):
                self._error(403, f"You don't have the rights to write to {repo_id}.", "Forbidden")
                return None
            return repo

        def _revision(self, repo: Repo, revision: str) -> Commit | None:
            commit = repo.resolve(unquote(revision))
            if commit is None:
                self._error(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
            return commit

        # -- routes -----------------------------------------------------------------------------------------
        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            if self._dropped():
                return None
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            query = parse_qs(url.query)
            if parts[:2] == ["api", "whoami-v2"]:
                ok, user = self._user()
                if not ok or user is None:
                    return self._error(401, "Invalid user token.")
                return self._json(
                    200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}}
                )
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = self._repo(f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return None
                rest = parts[4:]
                if rest[:1] == ["refs"]:
                    branches = [
                        {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                        for n, o in repo.branches.items()
                    ]
                    return self._json(200, {"branches": branches, "tags": [], "converts": []})
                if rest[:1] == ["tree"] and len(rest) >= 2:
                    commit = self._revision(repo, rest[1])
                    if commit is None:
                        return None
                    prefix = "/".join(rest[2:])
                    recursive = query.get("recursive", ["false"])[0].lower() == "true"
                    return self._json(200, _tree(commit, prefix, recursive))
                revision = rest[1] if rest[:1] == ["revision"] and len(rest) >= 2 else "main"
                commit = self._revision(repo, revision)
                if commit is None:
                    return None
                return self._json(
                    200,
                    {
                        "id": repo.repo_id,
                        "modelId": repo.repo_id,
                        "sha": commit.oid,
                        "private": repo.private,
                        "lastModified": commit.date,
                        "tags": [],
                        "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                    },
                )
            # /{org}/{name}/resolve/{revision}/{path...}
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo(f"{parts[0]}/{parts[1]}")
                if repo is None:
                    return None
                commit = self._revision(repo, parts[3])
                if commit is None:
                    return None
                path = "/".join(parts[4:])
                if path not in commit.files:
                    return self._error(404, "Entry not found", "EntryNotFound")
                data = commit.files[path]
                headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"'}
                if path in commit.lfs:  # the Hub names LFS files by their sha256
                    sha256 = hashlib.sha256(data).hexdigest()
                    headers.update(
                        {
                            "ETag": f'"{sha256}"',
                            "X-Linked-Etag": f'"{sha256}"',
                            "X-Linked-Size": str(len(data)),
                        }
                    )
                return self._send(200, data, headers, content_type="application/octet-stream")
            return self._error(404, f"Not found: {url.path}")

        def do_PUT(self):
            if self._dropped():
                return None
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            data = self._body()
            if parts[:1] != ["_lfs"] or len(parts) != 2:
                return self._error(404, f"Not found: {self.path}")
            if hashlib.sha256(data).hexdigest() != parts[1]:
                return self._error(400, "The uploaded content does not match its sha256.")
            with hub.lock:
                hub.lfs_objects[parts[1]] = data
            return self._send(200)

        def do_POST(self):
            if self._dropped():
                return None
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:1] == ["_lfs"] and parts[2:] == ["verify"]:
                payload = json.loads(self._body() or b"{}")
                stored = hub.lfs_objects.get(parts[1])
                if stored is None or len(stored) != payload.get("size"):
                    return self._error(404, "Object not found or of another size.")
                return self._json(200, {})
            if (
                len(parts) == 6
                and parts[1].endswith(".git")
                and parts[2:] == ["info", "lfs", "objects", "batch"]
            ):
                return self._lfs_batch(f"{parts[0]}/{parts[1].removesuffix('.git')}")
            if parts[:2] == ["api", "validate-yaml"]:
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:3] == ["api", "repos", "create"]:
                payload = json.loads(self._body() or b"{}")
                ok, user = self._user()
                if not ok or user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                owner = payload.get("organization") or user
                repo_id = f"{owner}/{payload['name']}"
                if owner != user:
                    return self._error(
                        403, f"You don't have the rights to create a model under the namespace {owner!r}."
                    )
                with hub.lock:
                    if repo_id in hub.repos:
                        return self._json(
                            409,
                            {
                                "error": "You already created this model repo",
                                "url": f"{hub.endpoint}/{repo_id}",
                            },
                        )
                    repo = Repo(repo_id, user, private=payload.get("visibility") == "private")
                    hub.repos[repo_id] = repo
                    hub.new_commit(
                        repo,
                        "main",
                        {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                        "initial commit",
                    )
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if parts[:2] != ["api", "models"] or len(parts) < 6:
                self._body()
                return self._error(404, f"Not found: {url.path}")
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if action == "paths-info":
                form = parse_qs(self._body().decode())
                repo = self._repo(repo_id)
                if repo is None:
                    return None
                commit = self._revision(repo, revision)
                if commit is None:
                    return None
                wanted = set(form.get("paths", []))
                return self._json(200, [e for e in _tree(commit, "", True) if e["path"] in wanted])
            if action == "preupload":
                payload = json.loads(self._body() or b"{}")
                repo = self._repo(repo_id, write=True)
                if repo is None:
                    return None
                current = repo.resolve(unquote(revision))
                if current is None:
                    return self._error(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
                answer = []
                for item in payload.get("files", []):
                    path, existing = item["path"], current.files.get(item["path"])
                    lfs = current.is_lfs_path(path, item["size"])
                    # The oid of the remote file, which the client compares with its own to skip unchanged files.
                    oid = (
                        None
                        if existing is None
                        else hashlib.sha256(existing).hexdigest()
                        if lfs
                        else git_blob_sha1(existing)
                    )
                    answer.append(
                        {
                            "path": path,
                            "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False,
                            "oid": oid,
                        }
                    )
                return self._json(200, {"files": answer})
            if action == "branch":
                payload = json.loads(self._body() or b"{}")
                repo = self._repo(repo_id, write=True)
                if repo is None:
                    return None
                if revision in repo.branches:
                    return self._error(409, f"Reference already exists: refs/heads/{revision}")
                start = repo.resolve(payload.get("startingPoint") or "main")
                if start is None:
                    return self._error(404, "Invalid starting point", "RevisionNotFound")
                repo.branches[revision] = start.oid
                return self._json(200, {})
            if action == "commit":
                return self._commit(repo_id, unquote(revision))
            self._body()
            return self._error(404, f"Not found: {url.path}")

        def _commit(self, repo_id: str, revision: str):
            length = int(self.headers.get("Content-Length") or 0)
            with hub.lock:
                hub.commit_requests += 1
                fault = hub.faults.pop(0) if hub.faults else None
            if fault == "drop_request":
                # The client dies (or the network drops) halfway through the body: nothing may change.
                self.rfile.read(length // 2)
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            body = self.rfile.read(length)
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return None
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next((item["value"] for item in lines if item["key"] == "header"), {})
            with hub.lock:
                hub.commits_received.append([item["key"] for item in lines if item["key"] != "header"])
                head = repo.branches.get(revision)
                if head is None:
                    return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                if header.get("parentCommit") and header["parentCommit"] != head:
                    return self._error(412, "A commit has happened since. Please refresh and try again.")
                files, lfs = dict(repo.commits[head].files), set(repo.commits[head].lfs)
                for item in lines:
                    value = item["value"]
                    if item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                        lfs.discard(value["path"])
                    elif item["key"] == "lfsFile":
                        content = hub.lfs_objects.get(value["oid"])
                        if content is None or len(content) != value.get("size", len(content)):
                            return self._error(
                                422, f"LFS object {value['oid']} of {value['path']} was never uploaded."
                            )
                        files[value["path"]] = content
                        lfs.add(value["path"])
                    elif item["key"] == "deletedFile":
                        if value["path"] not in files:
                            return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                        del files[value["path"]]
                    elif item["key"] == "deletedFolder":
                        files = {
                            p: d
                            for p, d in files.items()
                            if not p.startswith(value["path"].rstrip("/") + "/")
                        }
                commit = hub.new_commit(repo, revision, files, header.get("summary", ""), frozenset(lfs))
            if fault == "drop_response":
                # The commit landed but the answer is lost: the client must find out by itself.
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            return self._json(
                200,
                {
                    "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.oid}",
                    "commitOid": commit.oid,
                    "pullRequestUrl": None,
                },
            )

        def _lfs_batch(self, repo_id: str):
            """The git-lfs batch API: where to PUT each object (nothing for objects the store already holds)."""
            payload = json.loads(self._body() or b"{}")
            repo = self._repo(repo_id, write=True)
            if repo is None:
                return None
            if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
                return self._error(400, "Only basic uploads are supported.")
            objects = []
            for item in payload.get("objects", []):
                answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
                if item["oid"] not in hub.lfs_objects:
                    href = f"{hub.endpoint}/_lfs/{item['oid']}"
                    answer["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
                objects.append(answer)
            body = json.dumps({"transfer": "basic", "objects": objects}).encode()
            return self._send(200, body, content_type="application/vnd.git-lfs+json")

    return Handler


def _tree(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
    prefix = prefix.strip("/")
    entries: dict[str, dict] = {}
    for path, data in sorted(commit.files.items()):
        if prefix and not path.startswith(prefix + "/"):
            continue
        relative = path[len(prefix) + 1 :] if prefix else path
        if not recursive and "/" in relative:
            folder = (prefix + "/" if prefix else "") + relative.split("/")[0]
            entries[folder] = {
                "type": "directory",
                "path": folder,
                "oid": hashlib.sha1(folder.encode()).hexdigest(),
            }
            continue
        if recursive:
            parent = ""
            for piece in relative.split("/")[:-1]:
                parent = f"{parent}/{piece}" if parent else piece
                folder = (prefix + "/" if prefix else "") + parent
                entries[folder] = {
                    "type": "directory",
                    "path": folder,
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                }
        if path in commit.lfs:
            pointer = lfs_pointer(data)
            lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
            entries[path] = {
                "type": "file",
                "path": path,
                "size": len(data),
                "oid": git_blob_sha1(pointer),
                "lfs": lfs,
            }
        else:
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    return list(entries.values())
