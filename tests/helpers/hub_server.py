"""A small Hugging Face Hub-compatible HTTP server for offline tests.

It implements what the real `huggingface_hub` and `datasets` clients call to create a dataset repository, push
parquet shards and a dataset card, and load the dataset back (see docs/testing.md, "A local Hub"):

    GET  /api/whoami-v2
    POST /api/repos/create                               (409 still carries `url`)
    POST /api/validate-yaml
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]       (sha, siblings with LFS info, cardData)
    POST /api/{type}s/{ns}/{name}/preupload/{rev}        (uploadMode lfs|regular, remote oid)
    POST /api/{type}s/{ns}/{name}/commit/{rev}           (NDJSON; parentCommit -> 412 on mismatch)
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]    (recursive, expand)
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}       (form-encoded)
    GET  /api/{type}s/{ns}/{name}/commits/{rev}
    POST /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch  -> upload href (PUT without auth) + verify href
    HEAD|GET /[{type}s/]{ns}/{name}/resolve/{rev}/{path} (X-Repo-Commit, ETag, Content-Length, Range -> 206)

Every commit is an immutable snapshot, so any commit id resolves. 404s carry `X-Error-Code` (RepoNotFound,
RevisionNotFound, EntryNotFound) because the clients branch on it. `fail_next()` makes the server drop a connection
(mid-body for uploads) or answer an error status, to test retries. The server never records request headers.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import hashlib
import itertools
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = ["*.parquet", "*.arrow", "*.png", "*.jpg", "*.jpeg", "*.webp", "*.bin", "*.safetensors", "*.pt",
                "*.npy", "*.zip", "*.gz", "*.tar"]
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
REGULAR_MAX_BYTES = 10 * 1024 * 1024  # larger files must go through LFS, as on the Hub
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}
REPO_NAME = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,94}[A-Za-z0-9]?$")
_TYPES = r"(?P<type>models|datasets|spaces)"
_REPO = r"(?P<repo>[^/]+/[^/]+)"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:  # the git blob id: of the pointer file for LFS files, as in git
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str  # "model", "dataset" or "space"
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)

    def history(self, revision: str) -> list[Commit]:
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    action: str | int  # "drop" (close the connection without answering) or an HTTP status
    remaining: int


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _split_front_matter(text: str) -> tuple[str | None, str]:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    return (match.group(1), text[match.end():]) if match else (None, text)


def card_data(readme: bytes | None) -> dict | None:
    if readme is None:
        return None
    front, _ = _split_front_matter(readme.decode("utf-8", errors="replace"))
    try:
        data = yaml.safe_load(front) if front else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def validate_card_yaml(content: str) -> list[str]:
    """The subset of the Hub's README metadata checks that matter for dataset cards."""
    front, _ = _split_front_matter(content)
    if front is None:
        return []
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as err:
        return [f"YAML is not valid: {err}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["YAML metadata must be a mapping"]
    errors = []

    def strings(key, allowed=None):
        value = data.get(key)
        if value is None:
            return
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            errors.append(f'"{key}" must be a string or a list of strings')
        elif allowed is not None and (bad := [v for v in values if v not in allowed]):
            errors.append(f'"{key}" has invalid values {bad}')

    for key in ("license", "language", "task_categories", "task_ids", "source_datasets", "tags",
                "annotations_creators", "language_creators", "multilinguality"):
        strings(key)
    strings("size_categories", SIZE_CATEGORIES)
    if "pretty_name" in data and not isinstance(data["pretty_name"], str):
        errors.append('"pretty_name" must be a string')
    configs = data.get("configs")
    if configs is not None:
        if not isinstance(configs, list):
            errors.append('"configs" must be a list')
        else:
            names, defaults = [], 0
            for config in configs:
                if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
                    errors.append('every item of "configs" needs a string "config_name"')
                    continue
                names.append(config["config_name"])
                defaults += bool(config.get("default"))
                files = config.get("data_files")
                if files is not None and not isinstance(files, (str, list)):
                    errors.append(f'"data_files" of config {config["config_name"]!r} must be a string or a list')
            if len(set(names)) != len(names):
                errors.append('"configs" has duplicate config names')
            if defaults > 1:
                errors.append('"configs" has several default configs')
    info = data.get("dataset_info")
    if info is not None and not isinstance(info, (dict, list)):
        errors.append('"dataset_info" must be a mapping or a list')
    return errors


class HubState:
    """Users, repositories and LFS objects; every mutation holds `lock`."""

    def __init__(self):
        self.lock = threading.RLock()
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> (user name, role "read" | "write")
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.pending_uploads: dict[str, tuple[str, int]] = {}  # upload id -> (sha256, size)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, headers never kept
        self.errors: list[str] = []  # unexpected server-side exceptions
        self._counter = itertools.count()

    def new_commit(self, repo: Repo, branch: str, files: dict[str, Blob], title: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}:{parent}:{title}:{next(self._counter)}:{secrets.token_hex(8)}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, _now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vldd-test-hub/1.0"
    state: HubState  # set on the subclass made per server
    base_url: str

    # -- plumbing ------------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # quiet: tests read `state.requests` instead
        pass

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if limit is not None and sum(map(len, chunks)) >= limit:
                    return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, {"error": err.message}, headers)

    def _drop(self) -> None:
        """Closes the connection abruptly; for a request with a body, after reading about half of it."""
        length = int(self.headers.get("Content-Length") or 0)
        if length or self.headers.get("Transfer-Encoding"):
            self._read_body(limit=max(1, length // 2) if length else 1)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fault(self, path: str):
        with self.state.lock:
            for fault in self.state.faults:
                if fault.remaining > 0 and fault.method == self.command and fault.pattern.search(path):
                    fault.remaining -= 1
                    return fault
        return None

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append((self.command, url.path))
        fault = self._fault(url.path)
        if fault is not None and fault.action == "drop":
            self._drop()
            return
        if fault is not None:
            self._read_body()
            self._error(HubError(int(fault.action), "injected failure"))
            return
        query = parse_qs(url.query)
        for method, pattern, name in ROUTES:
            match = re.match(pattern, url.path)
            if match and method == self.command:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                try:
                    getattr(self, f"_h_{name}")(query=query, **params)
                except HubError as err:
                    self._error(err)
                except Exception as err:  # a server bug: answer 500 and keep it for the tests to see
                    with self.state.lock:
                        self.state.errors.append(f"{self.command} {url.path}: {type(err).__name__}: {err}")
                    self.close_connection = True
                    self._error(HubError(500, f"test server error: {err}"))
                return
        self._read_body()
        self._error(HubError(404, f"no route for {self.command} {url.path}"))

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # -- auth and lookup -----------------------------------------------------------------------------------------
    def _user(self, required: bool = False) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header:
            if required:
                raise HubError(401, "Invalid username or password.")
            return None
        token = header.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, type: str, repo: str, write: bool = False) -> Repo:
        repo_type = type.rstrip("s")
        found = self.state.repos.get((repo_type, repo))
        user = self._user(required=write)
        if found is None or (found.private and (user is None or user[0] != found.owner)):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write:
            self._check_write(user, found.owner)
        return found

    @staticmethod
    def _check_write(user: tuple[str, str], namespace: str) -> None:
        name, role = user
        if role != "write":
            raise HubError(403, "You don't have write access: this token is read-only.")
        if name != namespace:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r}.")

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _url_prefix(self, repo: Repo) -> str:
        return "" if repo.repo_type == "model" else f"{repo.repo_type}s/"

    # -- entries -------------------------------------------------------------------------------------------------
    def _last_commit(self, repo: Repo, commit: Commit, path: str) -> dict:
        for older in repo.history(commit.oid):  # newest commit that changed `path` (or anything below it)
            parent = repo.commits.get(older.parent) if older.parent else None
            before = parent.files if parent else {}
            changed = any(p == path or p.startswith(path + "/") for p in set(older.files) | set(before)
                          if older.files.get(p) != before.get(p))
            if changed:
                return {"id": older.oid, "title": older.title, "date": older.date}
        return {"id": commit.oid, "title": commit.title, "date": commit.date}

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict | None:
        blob = commit.files.get(path)
        if blob is not None:
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
        elif any(p.startswith(path + "/") for p in commit.files):
            children = sorted(p for p in commit.files if p.startswith(path + "/"))
            oid = hashlib.sha1("\n".join(f"{p}:{commit.files[p].oid}" for p in children).encode()).hexdigest()
            entry = {"type": "directory", "oid": oid, "size": 0, "path": path}
        else:
            return None
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path)
        return entry

    def _tree(self, repo: Repo, commit: Commit, path: str, recursive: bool, expand: bool) -> list[dict]:
        prefix = path + "/" if path else ""
        names: set[str] = set()
        for file in commit.files:
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        # directories before their content, like the Hub's listing
        return [self._entry(repo, commit, name, expand) for name in sorted(names)]

    # -- routes --------------------------------------------------------------------------------------------------
    def _h_whoami(self, query):
        name, role = self._user(required=True)
        self._send(200, {
            "type": "user", "id": hashlib.sha1(name.encode()).hexdigest()[:24], "name": name, "fullname": name,
            "email": f"{name}@example.com", "emailVerified": True, "isPro": False, "orgs": [],
            "avatarUrl": f"{self.base_url}/avatars/{name}.svg",
            "auth": {"type": "access_token", "accessToken": {"displayName": "test token", "role": role}},
        })

    def _h_create_repo(self, query):
        payload = json.loads(self._read_body() or b"{}")
        user = self._user(required=True)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user[0]
        name = payload.get("name", "")
        repo_id = f"{namespace}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.base_url}/{prefix}{repo_id}"
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                if user[0] != namespace:
                    raise HubError(403, f"You don't have the rights to create a repo under {namespace!r}.")
                self._send(409, {"error": f"You already created this {repo_type} repo", "url": url})
                return
            self._check_write(user, namespace)
            if not REPO_NAME.match(name):
                raise HubError(400, f"Invalid repo name {name!r}")
            private = payload.get("private", payload.get("visibility") == "private")
            repo = Repo(repo_type, repo_id, bool(private))
            self.state.repos[(repo_type, repo_id)] = repo
            self.state.new_commit(repo, "main", {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, "initial commit")
        self._send(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _h_delete_repo(self, query):
        payload = json.loads(self._read_body() or b"{}")
        user = self._user(required=True)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user[0]
        repo_id = f"{namespace}/{payload.get('name', '')}"
        with self.state.lock:
            if (repo_type, repo_id) not in self.state.repos:
                raise HubError(404, "Repository not found", "RepoNotFound")
            self._check_write(user, namespace)
            del self.state.repos[(repo_type, repo_id)]
        self._send(200, {})

    def _h_validate_yaml(self, query):
        payload = json.loads(self._read_body() or b"{}")
        errors = validate_card_yaml(payload.get("content", ""))
        status = 400 if errors else 200
        self._send(status, {"errors": [{"message": e} for e in errors], "warnings": []})

    def _h_repo_info(self, query, type, repo, rev="main"):
        with self.state.lock:
            found = self._repo(type, repo)
            commit = self._commit(found, rev)
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for path in sorted(commit.files):
                sibling = {"rfilename": path}
                if blobs:
                    blob = commit.files[path]
                    sibling.update(size=len(blob.data), blobId=blob.oid)
                    if blob.lfs:
                        sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256,
                                          "pointerSize": len(blob.pointer)}
                siblings.append(sibling)
            info = {
                "_id": hashlib.sha1(found.repo_id.encode()).hexdigest()[:24], "id": found.repo_id,
                "author": found.owner, "sha": commit.oid, "lastModified": commit.date,
                "createdAt": found.history(commit.oid)[-1].date, "private": found.private, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            }
            data = card_data(commit.files["README.md"].data if "README.md" in commit.files else None)
            if data is not None:
                info["cardData"] = data
                info["tags"] = list(data.get("tags") or [])
        self._send(200, info)

    def _h_preupload(self, query, type, repo, rev):
        payload = json.loads(self._read_body() or b"{}")
        with self.state.lock:
            found = self._repo(type, repo, write=True)
            commit = found.resolve(rev)
            files = commit.files if commit else {}
            out = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item.get("size", 0))
                lfs = size >= REGULAR_MAX_BYTES or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p)
                                                       for p in LFS_PATTERNS)
                existing = files.get(path)
                out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": existing.etag if existing is not None else None})
        self._send(200, {"files": out, "commitOid": commit.oid if commit else None})

    def _h_lfs_batch(self, query, repo, type="models"):
        payload = json.loads(self._read_body() or b"{}")
        with self.state.lock:
            self._repo(type, repo, write=True)
            objects = []
            for item in payload.get("objects", []):
                oid, size = item["oid"], int(item["size"])
                if oid in self.state.lfs and len(self.state.lfs[oid]) == size:
                    objects.append({"oid": oid, "size": size})
                    continue
                upload_id = secrets.token_hex(16)
                self.state.pending_uploads[upload_id] = (oid, size)
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.base_url}/_lfs/upload/{upload_id}"},
                    "verify": {"href": f"{self.base_url}/_lfs/verify/{upload_id}"},
                }})
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def _h_lfs_upload(self, query, id):
        data = self._read_body()  # arrives without auth, like a pre-signed storage URL
        with self.state.lock:
            expected = self.state.pending_uploads.get(id)
            if expected is None:
                raise HubError(404, "unknown upload")
            if hashlib.sha256(data).hexdigest() != expected[0] or len(data) != expected[1]:
                raise HubError(400, "uploaded content does not match its oid/size")
            self.state.lfs[expected[0]] = data
        self._send(200, b"", content_type="text/plain")

    def _h_lfs_verify(self, query, id):
        payload = json.loads(self._read_body() or b"{}")
        self._user(required=True)
        with self.state.lock:
            expected = self.state.pending_uploads.get(id)
            ok = expected is not None and expected[0] in self.state.lfs and payload.get("oid") == expected[0]
        if not ok:
            raise HubError(422, "object not uploaded")
        self._send(200, {})

    def _h_commit(self, query, type, repo, rev):
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the test server")
        with self.state.lock:
            found = self._repo(type, repo, write=True)
            if rev not in found.branches:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            head = found.branches[rev]
            header = next((line["value"] for line in lines if line["key"] == "header"), {})
            parent = header.get("parentCommit")
            if parent and parent != head:
                raise HubError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            files = dict(found.commits[head].files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.state.lfs.get(value["oid"])
                    if data is None:
                        raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = Blob(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(folder)]:
                        del files[path]
                elif key != "header":
                    raise HubError(400, f"unsupported commit operation {key!r}")
            commit = self.state.new_commit(found, rev, files, header.get("summary") or "commit")
        self._send(200, {"success": True, "commitOid": commit.oid, "hookOutput": "", "pullRequestUrl": None,
                         "commitUrl": f"{self.base_url}/{self._url_prefix(found)}{found.repo_id}/commit/{commit.oid}"})

    def _h_tree(self, query, type, repo, rev, path=""):
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        with self.state.lock:
            found = self._repo(type, repo)
            commit = self._commit(found, rev)
            if path and (path in commit.files or not any(p.startswith(path + "/") for p in commit.files)):
                raise HubError(404, f"{path} does not exist or is not a directory", "EntryNotFound")
            entries = self._tree(found, commit, path, recursive, expand)
        self._send(200, entries)

    def _h_paths_info(self, query, type, repo, rev):
        form = parse_qs(self._read_body().decode())
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self.state.lock:
            found = self._repo(type, repo)
            commit = self._commit(found, rev)
            entries = [self._entry(found, commit, p.strip("/"), expand) for p in form.get("paths", [])]
        self._send(200, [e for e in entries if e is not None])

    def _h_list_commits(self, query, type, repo, rev):
        with self.state.lock:
            found = self._repo(type, repo)
            self._commit(found, rev)
            out = [{"id": c.oid, "title": c.title, "message": "", "date": c.date, "authors": [{"user": found.owner}]}
                   for c in found.history(rev)]
        self._send(200, out)

    def _h_resolve(self, query, repo, rev, path, type="models"):
        with self.state.lock:
            found = self._repo(type, repo)
            commit = self._commit(found, rev)
            blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data, status = blob.data, 200
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes"}
        ranged = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        if ranged and (ranged.group(1) or ranged.group(2)):
            if ranged.group(1):
                start = int(ranged.group(1))
                end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
            else:
                start, end = max(0, len(data) - int(ranged.group(2))), len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, "text/plain")
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, "application/octet-stream")


ROUTES = [
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("DELETE", r"^/api/repos/delete$", "delete_repo"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("GET", rf"^/api/{_TYPES}/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("POST", rf"^/api/{_TYPES}/{_REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", rf"^/api/{_TYPES}/{_REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ("GET", rf"^/api/{_TYPES}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", rf"^/api/{_TYPES}/{_REPO}/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", rf"^/api/{_TYPES}/{_REPO}/commits/(?P<rev>[^/]+)$", "list_commits"),
    ("POST", r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/_lfs/upload/(?P<id>\w+)$", "lfs_upload"),
    ("POST", r"^/_lfs/verify/(?P<id>\w+)$", "lfs_verify"),
    ("HEAD", r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("GET", r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class HubServer:
    """The test Hub, bound to 127.0.0.1 on a free port and served from a daemon thread.

    Example:
        >>> with HubServer() as hub:
        ...     token = hub.add_user("alice")
        ...     # point HF_ENDPOINT (and the clients' captured constants) at hub.url
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        handler.base_url = self.url
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-hub", daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_user(self, name: str, role: str = "write", token: str | None = None) -> str:
        """Registers a user and returns a new token for them (role "write" or "read")."""
        token = token or f"hf_{secrets.token_hex(16)}"
        with self.state.lock:
            self.state.tokens[token] = (name, role)
        return token

    def fail_next(self, method: str, path_regex: str, action: str | int = "drop", times: int = 1) -> None:
        """The next `times` requests matching `method` and `path_regex` fail: "drop" the connection, or a status."""
        with self.state.lock:
            self.state.faults.append(Fault(method.upper(), re.compile(path_regex), action, times))

    def requests(self, method: str | None = None, path_regex: str = "") -> list[tuple[str, str]]:
        with self.state.lock:
            return [(m, p) for m, p in self.state.requests
                    if (method is None or m == method) and re.search(path_regex, p)]

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Path -> content of every file of the repository at `revision`."""
        with self.state.lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            return {path: blob.data for path, blob in commit.files.items()}

    def all_bytes(self) -> list[bytes]:
        """Every stored content: each file of each commit of each repository, and every LFS object."""
        with self.state.lock:
            blobs = {id(b): b.data for r in self.state.repos.values() for c in r.commits.values()
                     for b in c.files.values()}
            return list(blobs.values()) + list(self.state.lfs.values())
