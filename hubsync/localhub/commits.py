"""Writing to a branch: preupload (which files go through LFS) and the NDJSON commit, streamed to disk a line at a
time."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from . import validation
from .call import Call, url_prefix
from .front_matter import MAX_YAML_BODY
from .protocol import MAX_LIST_BODY, Response
from .store import (
    AddLfs,
    AddStaged,
    CommitOp,
    Delete,
    StoreError,
    bad_request,
    check_path_in_repo,
    check_ref_name,
    is_lfs,
)

MAX_COMMIT_BODY = 1024 * 1024 * 1024  # streamed to disk a line at a time: bounds disk use, not memory
MAX_COMMIT_LINE = 16 * 1024 * 1024  # a regular file is under 10 MB (larger ones are LFS), base64 adds a third
MAX_COMMIT_OPS = 25_000


def preupload(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    if call.query.get("create_pr"):
        raise bad_request("Pull requests are not supported by the local Hub")
    revision = unquote(match["rev"])
    try:
        commit = call.store.commit(repo_type, repo_id, call.store.resolve(repo_type, repo_id, revision))
    except StoreError as err:
        if err.code == "RevisionNotFound":
            check_ref_name(revision, "branch")  # a name the Hub refuses is a bad request, not a missing branch
        raise
    data = call.body.json_object(MAX_LIST_BODY)
    files = data.get("files")
    if not isinstance(files, list):
        raise bad_request("Expected 'files'")
    out = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise bad_request("Each file needs a 'path'")
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
            size = int(item.get("size") or 0)
        except (binascii.Error, ValueError, TypeError):
            raise bad_request(f"Malformed sample or size for {item['path']!r}") from None
        if too_large := validation.file_size_error(item["path"], size):
            raise bad_request(too_large)
        lfs = is_lfs(item["path"], size, sample)
        existing = commit.files.get(item["path"])
        oid = None
        if existing is not None:
            oid = existing.sha256 if lfs else existing.oid
        out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return Response(body={"files": out, "commitOid": commit.id})


def create_commit(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    if call.query.get("create_pr"):
        raise bad_request("Pull requests are not supported by the local Hub")
    branch = unquote(match["rev"])
    user = call.user()
    assert user is not None
    with call.store.staging() as stage:  # files go to disk as their lines arrive; what is not kept goes
        header, ops = _parse_commit(_body_lines(call), stage)
        _check_readme(ops, repo_type)
        if not isinstance(header.get("description") or "", str) or not isinstance(
            header.get("parentCommit") or "", str
        ):
            raise bad_request("The commit header's description and parentCommit must be strings")
        commit = call.store.apply_commit(
            repo_type,
            repo_id,
            branch,
            ops,
            title=header["summary"],
            message=header.get("description") or "",
            author=user,
            parent_commit=header.get("parentCommit"),
        )
    url = f"{call.base_url}/{url_prefix(repo_type)}{repo_id}/commit/{commit.id}"
    return Response(body={"commitUrl": url, "commitOid": commit.id, "pullRequestUrl": None})


def _check_readme(ops: list[CommitOp], repo_type: str) -> None:
    """A commit that adds the root README.md is refused, as on the Hub, when its metadata would be refused by
    validate-yaml."""
    for readme in ops:  # every one added: a later line (a folder deleted by that name) may leave one in place
        if readme.path != "README.md" or not isinstance(readme, AddStaged):  # an LFS README is not read as a card
            continue
        with readme.staged.open("rb") as f:
            content = f.read(MAX_YAML_BODY).decode("utf-8", errors="replace")
        if errors := validation.card_metadata_errors(content, repo_type):
            raise bad_request(validation.readme_commit_error(errors))


def _body_lines(call: Call) -> Iterator[bytes]:
    """The request body a line at a time, never more than MAX_COMMIT_LINE of it in memory: a longer line,
    or a body over MAX_COMMIT_BODY, is refused with 413 (from the Content-Length, before any is read)."""
    if call.body.left is not None and call.body.left > MAX_COMMIT_BODY:
        raise StoreError(413, None, f"Request body larger than {MAX_COMMIT_BODY} bytes")
    pending = bytearray()
    total = 0
    for chunk in call.body.chunks():
        total += len(chunk)
        if total > MAX_COMMIT_BODY:
            raise StoreError(413, None, f"Request body larger than {MAX_COMMIT_BODY} bytes")
        call.hub.add_uploaded(len(chunk))
        scanned = len(pending)
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", max(start, scanned))) >= 0:
            yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_COMMIT_LINE:
            raise StoreError(413, None, f"A commit line is longer than {MAX_COMMIT_LINE} bytes")
    if pending:
        yield bytes(pending)


def _parse_commit(
    lines: Iterable[bytes], stage: Callable[[str, bytes], AddStaged]
) -> tuple[dict[str, Any], list[CommitOp]]:
    header: dict[str, Any] | None = None
    ops: list[CommitOp] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(ops) >= MAX_COMMIT_OPS:
            raise StoreError(413, None, f"A commit holds at most {MAX_COMMIT_OPS} operations")
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if not isinstance(value, dict):
                raise TypeError
            if key == "header":
                if header is not None or not isinstance(value.get("summary"), str):
                    raise TypeError
                header = value
            elif header is None:
                raise bad_request("The commit must start with its header line")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise TypeError
                path = check_path_in_repo(str(value["path"]))
                ops.append(stage(path, base64.b64decode(value["content"], validate=True)))
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise TypeError
                path = check_path_in_repo(str(value["path"]))
                ops.append(AddLfs(path, str(value["oid"]), value.get("size")))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(Delete(str(value["path"]), key == "deletedFolder"))
            else:
                raise TypeError
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
            raise bad_request(f"Malformed commit line {number}") from None
    if header is None:
        raise bad_request("The commit has no header line")
    return header, ops
