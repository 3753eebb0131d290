"""A revision's files: downloads (resolve, with HEAD and Range), the tree listing and paths-info."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote

from hubsync.files import git_blob_id

from . import xet
from .call import Call
from .connections import CHUNK
from .protocol import MAX_LIST_BODY, Response
from .store import Commit, FileEntry, Store, StoreError, bad_request, purged_object


def resolve(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_read(match)
    sha = call.store.resolve(repo_type, repo_id, unquote(match["rev"]))
    path = unquote(match["path"])
    entry = call.store.commit(repo_type, repo_id, sha).files.get(path)
    headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
    if entry is None:
        return Response(
            404,
            {"error": "Entry not found"},
            {**headers, "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
        )
    if entry.lfs and entry.sha256 in call.store.purged(repo_type, repo_id):
        err = purged_object(path)
        return Response(
            404, {"error": err.message}, {**headers, "X-Error-Code": "EntryNotFound", "X-Error-Message": err.message}
        )
    headers["ETag"] = f'"{entry.sha256 if entry.lfs else entry.oid}"'
    if entry.lfs:
        headers["X-Linked-Etag"] = headers["ETag"]
        headers["X-Linked-Size"] = str(entry.size)
    if entry.xet_hash is not None and call.hub.xet is not None:  # hf_xet downloads it; others get it over HTTP
        headers["X-Xet-Hash"] = entry.xet_hash
        headers["Link"] = xet.read_token_link(call, repo_type, repo_id, sha)
    start, end = 0, entry.size - 1
    status = 200
    range_header = call.headers.get("Range")
    if range_header:
        m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", range_header.strip())
        if not m or (not m[1] and not m[2]):
            raise StoreError(416, None, f"Unsupported range: {range_header}")
        if m[1]:
            start = int(m[1])
            end = min(int(m[2]), entry.size - 1) if m[2] else entry.size - 1
        else:  # suffix range: the last N bytes
            start = max(entry.size - int(m[2]), 0)
        if start >= entry.size or start > end:
            return Response(
                416, {"error": "Range not satisfiable"}, {**headers, "Content-Range": f"bytes */{entry.size}"}
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
    length = max(end - start + 1, 0)
    if call.request.method != "HEAD":
        call.store.ensure_blob(repo_type, repo_id, entry)
    return Response(
        status,
        stream_blob(call.store, entry.sha256, start, length),
        headers,
        content_type="application/octet-stream",
        length=length,
    )


def stream_blob(store: Store, sha256: str, start: int, length: int) -> Iterator[bytes]:
    with store.open_blob(sha256) as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(length, CHUNK))
            if not data:
                return
            length -= len(data)
            yield data


def list_tree(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id, commit = _commit_at(call, match)
    base = unquote(match["path"] or "").strip("/")
    recursive = call.query.get("recursive", ["false"])[0].lower() in ("1", "true")
    expand = call.query.get("expand", ["false"])[0].lower() in ("1", "true")
    prefix = base + "/" if base else ""
    if base and base in commit.files:
        paths = [base]
    else:
        found: set[str] = set()
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                found.add(prefix + "/".join(parts[:i]))
        if base and not found:
            raise StoreError(404, "EntryNotFound", f"{base} does not exist on {unquote(match['rev'])}")
        paths = sorted(found)
    return Response(body=_entries(call.store, commit, paths, expand, (repo_type, repo_id), call.hub.xet is not None))


def paths_info(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id, commit = _commit_at(call, match)
    body = call.body.read(MAX_LIST_BODY)
    ctype = call.headers.get("Content-Type", "")
    if "json" in ctype:
        try:
            form = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise bad_request("Malformed JSON body") from None
        if not isinstance(form, dict):
            raise bad_request("Expected a JSON object")
        paths, expand = form.get("paths", []), bool(form.get("expand", False))
    else:
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        paths = parsed.get("paths", [])
        expand = parsed.get("expand", ["false"])[0].lower() in ("1", "true")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise bad_request("'paths' must be a list of strings")
    existing = []
    for path in dict.fromkeys(p.strip("/") for p in paths):
        if path in commit.files or any(p.startswith(path + "/") for p in commit.files):
            existing.append(path)
    return Response(body=_entries(call.store, commit, existing, expand, (repo_type, repo_id), call.hub.xet is not None))


def _commit_at(call: Call, match: re.Match[str]) -> tuple[str, str, Commit]:
    repo_type, repo_id = call.repo_read(match)
    sha = call.store.resolve(repo_type, repo_id, unquote(match["rev"]))
    return repo_type, repo_id, call.store.commit(repo_type, repo_id, sha)


def _last_commits(store: Store, repo_type: str, repo_id: str, commit: Commit) -> dict[str, Commit]:
    """For each path of `commit`, the newest commit that changed it."""
    history = store.history(repo_type, repo_id, commit.id)
    last: dict[str, Commit] = {}
    for path, entry in commit.files.items():
        newest = history[0]
        for older in history[1:]:
            if older.files.get(path) != entry:
                break
            newest = older
        last[path] = newest
    return last


def _file_json(entry: FileEntry, last: Commit | None = None, xet: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}
    if entry.lfs:
        out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    if entry.xet_hash is not None and xet:  # a Hub serving without Xet sends such a file over HTTP only
        out["xetHash"] = entry.xet_hash
    if last is not None:
        out["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
    return out


def _dir_json(commit: Commit, path: str) -> dict[str, Any]:
    inside = sorted(e.oid + p for p, e in commit.files.items() if p.startswith(path + "/"))
    return {"type": "directory", "oid": git_blob_id("\n".join(inside).encode()), "size": 0, "path": path}


def _entries(
    store: Store, commit: Commit, paths: list[str], expand: bool, repo: tuple[str, str], xet: bool
) -> list[dict[str, Any]]:
    last = _last_commits(store, *repo, commit) if expand else {}
    out = []
    for path in paths:
        entry = commit.files.get(path)
        out.append(_file_json(entry, last.get(path), xet) if entry else _dir_json(commit, path))
    return out
