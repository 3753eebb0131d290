"""git-LFS: the batch API and the signed upload, verify and download links it hands out."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any
from urllib.parse import quote, unquote

from . import validation
from .call import Call
from .protocol import MAX_LIST_BODY, Response
from .repo_files import stream_blob
from .store import StoreError, bad_request, check_repo_name

LINK_LIFETIME = 24 * 3600  # seconds an LFS upload, verify or download link is valid


def token_digest(token: str) -> str:
    """What a signed link records of the token that asked for it: enough to find it again, not the token."""
    return hashlib.sha256(b"localhub-link:" + token.encode()).hexdigest()[:32]


def _ticket(secret: bytes, operation: str, oid: str, size: int, repo: str, holder: str, expires: int) -> str:
    """Upload, verify and download links carry no token (the client drops it on upload), so they are signed
    instead, for one object of one repository, for the token that asked (by its digest) and until a time:
    an upload for repository A does not let A use, nor anyone see, what repository B holds."""
    message = f"{operation}:{repo}:{oid}:{size}:{holder}:{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _link(call: Call, operation: str, oid: str, size: int, repo_type: str, repo_id: str) -> str:
    repo = f"{repo_type}:{repo_id}"
    token = call.token()
    holder = token_digest(token) if token else ""
    expires = int(time.time()) + LINK_LIFETIME
    ticket = _ticket(call.hub.secret, operation, oid, size, repo, holder, expires)
    query = f"size={size}&repo={quote(repo, safe='')}&holder={holder}&expires={expires}&ticket={ticket}"
    return f"{call.base_url}/_lfs/{oid}{'/verify' if operation == 'verify' else ''}?{query}"


def _ticket_checked(call: Call, oid: str, operation: str) -> tuple[int, str, str]:
    """The size and repository a signed link names; 403 when its ticket does not match or has expired.

    Access is checked again now, as on every request: the link's holder (the token that asked for it, or
    the one this request carries) must still read the repository (download) or write to it (upload,
    verify). A link to a repository that was deleted, or made private, answers like the repository."""
    try:
        size = int(call.query.get("size", [""])[0])
    except ValueError:
        raise bad_request("Missing size") from None
    try:
        expires = int(call.query.get("expires", [""])[0])
    except ValueError:
        raise StoreError(403, None, "Invalid or missing ticket") from None
    repo = call.query.get("repo", [""])[0]
    holder = call.query.get("holder", [""])[0]
    ticket = call.query.get("ticket", [""])[0]
    if not hmac.compare_digest(ticket, _ticket(call.hub.secret, operation, oid, size, repo, holder, expires)):
        raise StoreError(403, None, "Invalid or missing ticket")
    if expires < time.time():
        raise StoreError(403, None, "This link has expired: ask for a new one")
    repo_type, _, repo_id = repo.partition(":")
    if call.token() is None and holder:
        call.holder = call.hub.token_of_digest(holder)
    if operation == "download":
        call.readable(repo_type, repo_id)
    else:
        call.writable(repo_type, repo_id)
    if operation != "upload" and oid not in call.store.lfs_objects(repo_type, repo_id):
        raise StoreError(404, None, f"Object {oid} does not exist")
    return size, repo_type, repo_id


def lfs_batch(call: Call, match: re.Match[str]) -> Response:
    repo_type = (match["t"] or "models")[:-1]
    repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
    check_repo_name(repo_id)
    data = call.body.json_object(MAX_LIST_BODY)
    operation = data.get("operation")
    if operation == "upload":
        call.writable(repo_type, repo_id)
    elif operation == "download":
        call.readable(repo_type, repo_id)
    else:
        raise bad_request("'operation' must be 'upload' or 'download'")
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise bad_request("Expected 'objects'")
    known = call.store.lfs_objects(repo_type, repo_id)
    out = []
    for obj in objects:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if (
            not isinstance(oid, str)
            or not re.fullmatch(r"[0-9a-f]{64}", oid)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
        ):
            out.append({"oid": str(oid), "size": size, "error": {"code": 422, "message": "Invalid object"}})
            continue
        item: dict[str, Any] = {"oid": oid, "size": size}
        if operation == "upload" and (too_large := validation.file_size_error(oid, size)):
            out.append({**item, "error": {"code": 422, "message": too_large}})
            continue
        held = oid in known and call.store.has_blob(oid, size)
        if operation == "download" and not held and (entry := call.store.xet_entry(repo_type, repo_id, oid)):
            call.store.ensure_blob(repo_type, repo_id, entry)  # uploaded through Xet: rebuilt for git-LFS
            held = call.store.has_blob(oid, size) and oid in call.store.lfs_objects(repo_type, repo_id)
        if operation == "upload" and not held:  # even when stored for another repository: send it
            item["actions"] = {
                "upload": {"href": _link(call, "upload", oid, size, repo_type, repo_id)},
                "verify": {"href": _link(call, "verify", oid, size, repo_type, repo_id)},
            }
        elif operation == "download":
            if not held:
                item["error"] = {"code": 404, "message": "Object does not exist"}
            else:
                item["actions"] = {"download": {"href": _link(call, "download", oid, size, repo_type, repo_id)}}
        out.append(item)
    return Response(
        body={"transfer": "basic", "objects": out, "hash_algo": "sha256"},
        content_type="application/vnd.git-lfs+json",
    )


def lfs_upload(call: Call, match: re.Match[str]) -> Response:
    oid = match["oid"]
    size, repo_type, repo_id = _ticket_checked(call, oid, "upload")  # before a byte of the body is read
    if call.body.left is not None and call.body.left != size:
        raise bad_request(f"Content-Length {call.body.left} does not match the object size {size}")
    # Stored again even when the store has it: the content is checked against the sha256 before the
    # repository may use the object, so knowing a hash is not enough to get another repository's file.
    # Streamed to disk; more bytes than the link names are refused as they arrive.
    call.store.put_blob_stream(oid, size, call.hub.count_upload(call.body.chunks()))
    call.store.grant_lfs(repo_type, repo_id, oid)
    return Response(body={})


def lfs_verify(call: Call, match: re.Match[str]) -> Response:
    if call.user() is None:
        raise StoreError(401, None, "You must be authenticated to verify an upload")
    size, _, _ = _ticket_checked(call, match["oid"], "verify")
    data = call.body.json_object()
    if data.get("oid") != match["oid"] or data.get("size") != size:
        raise bad_request("Expected the object's 'oid' and 'size'")
    if not call.store.has_blob(match["oid"], size):
        raise StoreError(404, None, f"Object {match['oid']} of {size} bytes was not uploaded")
    return Response(body={})


def lfs_download(call: Call, match: re.Match[str]) -> Response:
    oid = match["oid"]
    size, _, _ = _ticket_checked(call, oid, "download")
    if not call.store.has_blob(oid, size):
        raise StoreError(404, None, f"Object {oid} does not exist")
    return Response(200, stream_blob(call.store, oid, 0, size), content_type="application/octet-stream", length=size)


# -- the repository's LFS files: HfApi.list_lfs_files and permanently_delete_lfs_files -------------------------
_FILE_OID = re.compile(r"[0-9a-f]{40}")


def list_lfs_files(call: Call, match: re.Match[str]) -> Response:
    """`HfApi.list_lfs_files`: the repository's LFS objects (`Store.lfs_files`), to its writers only, a page of
    at most `hub.lfs_page_size` at a time; a `Link: <...>; rel="next"` header names the next page, which
    huggingface_hub's `paginate` follows. The cursor is the offset in the listing's stable order."""
    repo_type, repo_id = call.repo_write(match)
    raw = call.query.get("cursor", ["0"])[0]
    if not raw.isdigit() or len(raw) > 12:
        raise bad_request(f"Invalid cursor: {raw!r}")
    start, size = int(raw), call.hub.lfs_page_size
    files = call.store.lfs_files(repo_type, repo_id)
    headers = {}
    if start + size < len(files):
        url = f"{call.base_url}/api/{repo_type}s/{quote(repo_id, safe='/')}/lfs-files?cursor={start + size}"
        headers["Link"] = f'<{url}>; rel="next"'
    return Response(body=[f.to_json() for f in files[start : start + size]], headers=headers)


def delete_lfs_files(call: Call, match: re.Match[str]) -> Response:
    """`HfApi.permanently_delete_lfs_files`: `{"deletions": {"sha": [fileOid, ...], "rewriteHistory": bool}}`.
    The body is checked whole, and every id (`Store.purge_lfs`), before anything is deleted."""
    repo_type, repo_id = call.repo_write(match)
    data = call.body.json_object(MAX_LIST_BODY)
    deletions = data.get("deletions")
    if set(data) != {"deletions"} or not isinstance(deletions, dict):
        raise bad_request("Expected {'deletions': {'sha': [fileOid, ...], 'rewriteHistory': true|false}}")
    if unknown := sorted(set(deletions) - {"sha", "rewriteHistory"}):
        raise bad_request(f"Unknown key in 'deletions': {unknown[0]!r}")
    shas = deletions.get("sha")
    rewrite = deletions.get("rewriteHistory", True)
    if not isinstance(shas, list) or not shas:
        raise bad_request("'deletions.sha' must be a non-empty list of LFS file ids")
    if bad := [s for s in shas if not isinstance(s, str) or not _FILE_OID.fullmatch(s)]:
        raise bad_request(f"Invalid LFS file id in 'deletions.sha': {str(bad[0])[:80]!r} (expected 40 hex digits)")
    if not isinstance(rewrite, bool):
        raise bad_request("'deletions.rewriteHistory' must be true or false")
    call.store.purge_lfs(repo_type, repo_id, list(dict.fromkeys(shas)), rewrite)
    return Response(body={})
