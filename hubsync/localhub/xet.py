"""Xet's routes: the read and write tokens that send hf_xet to the repository's Xet storage (`xet_storage.py`), and
the `Link` a resolve of a Xet file carries.

huggingface.co hands a client a short-lived token and the address of its Xet storage (CAS); hf_xet then uploads
chunks (in xorbs) and a shard that maps each file to its chunks, and the commit names the file by its sha256 alone.
The Hub finds the file in the shards it received. A Hub without Xet has no such routes: it answers 404.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from .call import Call
from .protocol import Response
from .store import StoreError, check_ref_name


def _token_route(call: Call, match: re.Match[str], operation: str) -> Response:
    if call.hub.xet is None:
        raise StoreError(404, None, "Not Found")  # a Hub without Xet has no such route, for anyone
    repo_type, repo_id = call.repo_write(match) if operation == "write" else call.repo_read(match)
    revision = unquote(match["rev"])
    if operation == "read":
        call.store.resolve(repo_type, repo_id, revision)  # a revision that is not there gets no token
    elif revision != "None":  # "None": a token for a pull request's ref, not known yet
        check_ref_name(revision)
    token, expiry = call.hub.xet.new_token(operation, repo_type, repo_id)
    cas_url = call.hub.xet_cas_url or call.hub.xet.cas_url(repo_type, repo_id)
    headers = {"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": token, "X-Xet-Token-Expiration": str(expiry)}
    return Response(body={"accessToken": token, "exp": expiry, "casUrl": cas_url}, headers=headers)


def write_token(call: Call, match: re.Match[str]) -> Response:
    return _token_route(call, match, "write")


def read_token(call: Call, match: re.Match[str]) -> Response:
    return _token_route(call, match, "read")


def read_token_link(call: Call, repo_type: str, repo_id: str, commit: str) -> str:
    """The `Link: <...>; rel="xet-auth"` a resolve of a Xet file carries: where hf_xet gets a read token."""
    return f'<{call.base_url}/api/{repo_type}s/{repo_id}/xet-read-token/{quote(commit, safe="")}>; rel="xet-auth"'
