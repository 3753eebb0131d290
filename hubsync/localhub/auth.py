"""Who is asking: whoami (with the organizations the user is a member of), and Trusted Publishing's exchange of a
CI job's OIDC id token for a token scoped to one repository (RFC 8693)."""

from __future__ import annotations

import hashlib
import re

from .call import Call
from .protocol import Response
from .store import StoreError, bad_request


def whoami(call: Call, match: re.Match[str]) -> Response:
    user = call.user()
    if user is None:
        raise StoreError(401, None, "Invalid username or password.")
    return Response(
        body={
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "fullname": user,
            "orgs": [
                {
                    "type": "org",
                    "id": hashlib.sha1(org.encode()).hexdigest()[:24],
                    "name": org,
                    "fullname": org,
                    "roleInOrg": "write",
                }
                for org in call.store.orgs_of(user)
            ],
            "isPro": False,
            "canPay": False,
            "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}},
        }
    )


def oauth_token(call: Call, match: re.Match[str]) -> Response:
    """Trusted Publishing: an OIDC id token that `LocalHubServer.trust_publisher` registered is exchanged
    (RFC 8693) for a short-lived token that may write to one repository. Others get 401, as on the Hub."""
    data = call.body.json_object()
    if (
        data.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
        or data.get("subject_token_type") != "urn:ietf:params:oauth:token-type:id_token"
        or not isinstance(data.get("subject_token"), str)
        or not isinstance(data.get("resource"), str)
    ):
        raise bad_request("Expected an RFC 8693 token exchange of an OIDC id token for a resource")
    token = call.hub.exchange_id_token(data["subject_token"], data["resource"])
    if token is None:
        raise StoreError(401, None, f"No trusted publisher of {data['resource']} matches this id token")
    return Response(
        body={
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "bearer",
            "expires_in": 3600,
        }
    )
