"""Branches, tags, the refs listing and a revision's commit history."""

from __future__ import annotations

import re
from urllib.parse import unquote

from .call import Call
from .protocol import Response
from .store import bad_request


def create_branch(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    data = call.body.json_object()
    start = data.get("startingPoint")
    if start is not None and not isinstance(start, str):
        raise bad_request("'startingPoint' must be a string")
    call.store.create_branch(repo_type, repo_id, unquote(match["branch"]), start)
    return Response(body={})


def delete_branch(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    call.store.delete_branch(repo_type, repo_id, unquote(match["branch"]))
    return Response(body={})


def create_tag(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    data = call.body.json_object()
    if not isinstance(data.get("tag"), str):
        raise bad_request("Expected 'tag'")
    call.store.create_tag(repo_type, repo_id, data["tag"], unquote(match["rev"]))
    return Response(body={})


def delete_tag(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    call.store.delete_tag(repo_type, repo_id, unquote(match["tag"]))
    return Response(body={})


def list_refs(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_read(match)
    refs = call.store.refs(repo_type, repo_id)

    def listing(kind: str, prefix: str) -> list[dict[str, str]]:
        return [
            {"name": name, "ref": f"refs/{prefix}/{name}", "targetCommit": sha}
            for name, sha in sorted(refs[kind].items())
        ]

    return Response(
        body={
            "branches": listing("branches", "heads"),
            "converts": [],
            "tags": listing("tags", "tags"),
            "pullRequests": [],
        }
    )


def list_commits(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_read(match)
    sha = call.store.resolve(repo_type, repo_id, unquote(match["rev"]))
    return Response(
        body=[
            {"id": c.id, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
            for c in call.store.history(repo_type, repo_id, sha)
        ]
    )
