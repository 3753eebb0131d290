"""Repositories: list, create, delete, info (with file metadata), settings (visibility), and validate-yaml for
their cards."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import unquote

from . import validation
from .call import RESERVED_NAMESPACES, Call, url_prefix
from .front_matter import MAX_FRONT_MATTER, MAX_YAML_BODY, FrontMatterError, load_front_matter
from .protocol import Response, error_response
from .store import Commit, Store, StoreError, bad_request


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
        and (not meta.private or call.store.may_write(user, meta.repo_id.split("/")[0]))
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
    if namespace in RESERVED_NAMESPACES:
        raise bad_request(f"Reserved namespace: {namespace!r}")
    if not call.store.may_write(user, namespace):  # the Hub's words; the same for an organization that is not one
        raise StoreError(
            403, None, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
        )
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
    card = card_data(call.store, commit)
    blobs = call.query.get("blobs", ["false"])[0].lower() in ("1", "true")
    siblings = []
    for entry in sorted(commit.files.values(), key=lambda e: e.path):
        sibling: dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            sibling.update({"size": entry.size, "blobId": entry.oid})
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        siblings.append(sibling)
    body: dict[str, Any] = {
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
        "tags": hub_tags(card, commit) if repo_type == "model" else _card_tags(card),
        "siblings": siblings,
    }
    if card is not None:
        body["cardData"] = card
        if repo_type == "model":
            body.update({key: card[key] for key in ("pipeline_tag", "library_name") if isinstance(card.get(key), str)})
    expand = [value for values in call.query.get("expand", []) for value in values.split(",") if value]
    if expand:
        # As the Hub: an `expand` answer holds the fields asked for (those the local Hub has) and the ids only.
        # usedStorage is only ever computed when asked: it reads every commit record of the repository.
        if "usedStorage" in expand:
            body["usedStorage"] = call.store.used_storage(repo_type, repo_id)
        body = {key: value for key, value in body.items() if key in ("_id", "id", *expand)}
    return Response(body=body)


def card_data(store: Store, commit: Commit) -> dict[str, Any] | None:
    """The front matter of the revision's README.md, as the Hub serves it in `cardData`; None when there is no
    README, no front matter, or front matter the Hub would not read (it refuses such a README anyway)."""
    entry = commit.files.get("README.md")
    if entry is None or entry.lfs:
        return None
    with store.open_blob(entry.sha256) as f:
        content = f.read(MAX_YAML_BODY).decode("utf-8", errors="replace")
    end = content.find("\n---", 3)
    if not content.startswith("---") or end < 0 or end - 3 > MAX_FRONT_MATTER:
        return None
    try:
        meta = load_front_matter(content[3:end])
    except FrontMatterError:
        return None
    if not isinstance(meta, dict) or not meta:
        return None
    # As JSON: YAML's dates become strings, keys that JSON cannot hold are dropped (the Hub serves JSON too).
    loaded: dict[str, Any] = json.loads(json.dumps(meta, default=str, skipkeys=True))
    return loaded


def _card_tags(card: dict[str, Any] | None) -> list[str]:
    tags = (card or {}).get("tags")
    if isinstance(tags, str):
        tags = [tags]
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _names(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and v]


def hub_tags(card: dict[str, Any] | None, commit: Commit) -> list[str]:
    """A model's tags as the Hub lists them: the card's own, then those it derives from the card (library,
    pipeline type, `dataset:`, `base_model:` with the relation, `license:`) and `region:us`, each once.

    The relation is the card's `base_model_relation`, else `adapter` when the revision has an adapter_config.json
    (what the Hub infers for a PEFT adapter), else `finetune`."""
    card = card or {}
    tags = _card_tags(card)
    tags += _names(card.get("library_name"))
    tags += _names(card.get("pipeline_tag"))
    tags += [f"dataset:{d}" for d in _names(card.get("datasets"))]
    bases = _names(card.get("base_model"))
    relation = card.get("base_model_relation")
    if not isinstance(relation, str):
        relation = "adapter" if "adapter_config.json" in commit.files else "finetune"
    for base in bases:
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    tags += [f"license:{name}" for name in _names(card.get("license"))]
    tags.append("region:us")
    return list(dict.fromkeys(tags))


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
    repo_type = data.get("repoType") or "model"
    if repo_type not in ("model", "dataset", "space"):
        raise bad_request("'repoType' must be model, dataset or space")
    errors = [{"message": message} for message in validation.card_metadata_errors(content, repo_type)]
    status = 400 if errors else 200
    return Response(status, {"errors": errors, "warnings": []})
