"""Repositories: list, create, delete, info (with file metadata), settings (visibility), and validate-yaml for
their cards."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import unquote

from hubsync.core.metadata import HUB_LICENSES, license_problem

from .call import RESERVED_NAMESPACES, Call, url_prefix
from .front_matter import MAX_FRONT_MATTER, MAX_YAML_BODY, FrontMatterError, load_front_matter
from .protocol import Response, error_response
from .store import StoreError, bad_request


def _private_of(data: dict[str, Any], default: bool) -> bool:
    """Clients send `"visibility": "private" | "public"`; older ones `"private": bool`."""
    visibility = data.get("visibility")
    if visibility in ("private", "public"):
        return bool(visibility == "private")
    if visibility is not None:
        raise bad_request(f"Invalid visibility: {visibility!r}")
    private = data.get("private", default)
    if not isinstance(private, bool):
        raise bad_request("'private' must be true or false")
    return private


def list_repos(call: Call, match: re.Match[str]) -> Response:
    """`HfApi.list_models` (and datasets, spaces): the repositories this caller can see, `?author=` and
    `?search=` filtered, newest first as the Hub sorts by default; private ones only to their owner."""
    user = call.user()
    repo_type = match["t"][:-1]
    author = call.query.get("author", [None])[0]
    search = (call.query.get("search", [""])[0] or "").lower()
    found = [
        meta
        for meta in call.store.list_repos()
        if meta.repo_type == repo_type
        and (not meta.private or meta.owner == user)
        and (author is None or meta.repo_id.split("/")[0] == author)
        and search in meta.repo_id.lower()
    ]
    found.sort(key=lambda m: m.created_at, reverse=True)
    return Response(
        body=[
            {
                "_id": hashlib.sha1(m.repo_id.encode()).hexdigest()[:24],
                "id": m.repo_id,
                "private": m.private,
                "createdAt": m.created_at,
                "downloads": 0,
                "likes": 0,
                "tags": [],
            }
            for m in found
        ]
    )


def create_repo(call: Call, match: re.Match[str]) -> Response:
    user = call.user()
    if user is None:
        raise StoreError(401, None, "You must be authenticated to create a repository")
    data = call.body.json_object()
    name, org = data.get("name"), data.get("organization")
    repo_type = data.get("type") or "model"
    if (
        not isinstance(name, str)
        or not isinstance(org, (str, type(None)))
        or repo_type not in ("model", "dataset", "space")
    ):
        raise bad_request("Expected 'name' and optional 'organization' and 'type'")
    namespace = org or user
    if namespace != user:
        raise StoreError(403, None, f"You cannot create a repository in the namespace {namespace!r}")
    if namespace in RESERVED_NAMESPACES:
        raise bad_request(f"Reserved namespace: {namespace!r}")
    repo_id = f"{namespace}/{name}"
    if call.scope not in (None, repo_id):
        raise StoreError(403, None, f"This token may only write to {call.scope}")
    url = f"{call.base_url}/{url_prefix(repo_type)}{repo_id}"
    try:
        call.store.create_repo(repo_type, repo_id, user, _private_of(data, default=False))
    except StoreError as err:
        if err.status != 409:
            raise
        # Like the Hub, name the existing repository: huggingface_hub's exist_ok path reads its url.
        response = error_response(409, None, err.message)
        response.body = {"error": err.message, "url": url}
        return response
    return Response(body={"url": url, "name": repo_id})


def delete_repo(call: Call, match: re.Match[str]) -> Response:
    data = call.body.json_object()
    repo_type = data.get("type") or "model"
    user = call.user()
    if not isinstance(data.get("name"), str):
        raise bad_request("Expected 'name'")
    repo_id = f"{data.get('organization') or user}/{data['name']}"
    call.writable(repo_type, repo_id)
    call.store.delete_repo(repo_type, repo_id)
    return Response(body={})


def repo_info(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_read(match)
    meta = call.store.repo(repo_type, repo_id)
    assert meta is not None
    rev = unquote(match["rev"]) if match["rev"] else "main"
    commit = call.store.commit(repo_type, repo_id, call.store.resolve(repo_type, repo_id, rev))
    blobs = call.query.get("blobs", ["false"])[0].lower() in ("1", "true")
    siblings = []
    for entry in sorted(commit.files.values(), key=lambda e: e.path):
        sibling: dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            sibling.update({"size": entry.size, "blobId": entry.oid})
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        siblings.append(sibling)
    return Response(
        body={
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.id,
            "private": meta.private,
            "disabled": False,
            "gated": False,
            "lastModified": commit.date,
            "createdAt": meta.created_at,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
    )


def settings(call: Call, match: re.Match[str]) -> Response:
    repo_type, repo_id = call.repo_write(match)
    data = call.body.json_object()
    if "private" in data or "visibility" in data:
        call.store.set_private(repo_type, repo_id, _private_of(data, default=False))
    return Response(body={})


def validate_yaml(call: Call, match: re.Match[str]) -> Response:
    data = call.body.json_object(MAX_YAML_BODY)
    content = data.get("content")
    if not isinstance(content, str):
        raise bad_request("Expected 'content'")
    errors = []
    if content.startswith("---"):
        end = content.find("\n---", 3)
        if end < 0:
            errors.append({"message": "Unterminated YAML front matter"})
        elif end - 3 > MAX_FRONT_MATTER:
            errors.append({"message": f"The YAML front matter is larger than {MAX_FRONT_MATTER} bytes"})
        else:
            try:
                meta = load_front_matter(content[3:end])
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "YAML front matter must be a mapping"})
                elif meta and "license" in meta and license_problem(meta["license"]) is not None:
                    # huggingface.co's words (huggingface_hub issue #4218): a name from its list, or a list
                    errors.append({"message": f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]'})
            except FrontMatterError as exc:
                errors.append({"message": f"Invalid YAML front matter: {exc}"})
    status = 400 if errors else 200
    return Response(status, {"errors": errors, "warnings": []})
