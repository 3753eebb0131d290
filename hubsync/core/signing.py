"""Signed revisions: who signs a push and how a pull checks it, the card's words for it, and the comparison of a
signature's manifest with a revision's listing. Pure: the signing and the reading of signatures are hubsync/signing.py.

A signature is the OpenSSF Model Signing format (model_signing 1.x): one detached `model.sig` at the revision's root,
a Sigstore bundle whose DSSE payload lists the SHA-256 of every file the commit publishes but `model.sig` itself.
The Hub's own `.gitattributes` (put there when the repository is created) is the one file it does not cover: hubsync
never publishes it and pull never places it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import SignatureError

SIGNATURE_FILE = "model.sig"
# A bundle lists every file (about 150 bytes each, base64 inside the envelope) and one certificate chain: a
# checkpoint of some thousands of files fits in a few MB. Anything much larger is no signature hubsync wrote.
MAX_SIGNATURE_BYTES = 16 * 1024 * 1024
NOT_SIGNED = frozenset({SIGNATURE_FILE, ".gitattributes"})  # on a revision, the files a signature does not cover
SIGSTORE_GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
METHODS = ("key", "certificate", "sigstore")
CHANGED = "differs from the file that was signed: changed after signing"


@dataclass(frozen=True)
class Signing:
    """How a push signs: an EC private key (PEM), that key with its certificate and chain, or keyless Sigstore
    (the OIDC identity of the environment, such as a GitHub workflow's)."""

    method: str  # one of METHODS
    private_key: str | None = None
    certificate: str | None = None
    chain: tuple[str, ...] = ()
    signer: str = ""  # who signs, as the card says it: the key's fingerprint, the certificate's subject, an identity

    def to_json(self) -> dict[str, str]:
        return {"method": self.method, "signer": self.signer}


@dataclass(frozen=True)
class Verifying:
    """How a pull checks a revision's signature: with a public key (PEM), a certificate chain, or the identity and
    OIDC issuer of a keyless Sigstore signature."""

    method: str  # one of METHODS
    public_key: str | None = None
    chain: tuple[str, ...] = ()
    identity: str | None = None
    issuer: str | None = None


def card_section(signing: Signing, repo_id: str, revision: str) -> str:
    """What the card says of a signed revision: who signed, how, and the two commands that verify it."""
    if signing.method == "sigstore":
        how = "keyless, through Sigstore (a short-lived certificate for the identity below, logged in Rekor)"
        hubsync = f"hubsync pull {repo_id} --revision {revision} --verify-identity IDENTITY --verify-issuer ISSUER"
        tool = (
            f"model_signing verify sigstore ckpt --signature ckpt/{SIGNATURE_FILE} --ignore-paths ckpt/.cache "
            "--identity IDENTITY --identity_provider ISSUER"
        )
    elif signing.method == "certificate":
        how = "with a private key and its certificate"
        hubsync = f"hubsync pull {repo_id} --revision {revision} --verify-chain CHAIN.pem"
        tool = (
            f"model_signing verify certificate ckpt --signature ckpt/{SIGNATURE_FILE} --ignore-paths ckpt/.cache "
            "--certificate_chain CHAIN.pem"
        )
    else:
        how = "with an elliptic-curve private key"
        hubsync = f"hubsync pull {repo_id} --revision {revision} --verify KEY.pub"
        tool = (
            f"model_signing verify key ckpt --signature ckpt/{SIGNATURE_FILE} --ignore-paths ckpt/.cache "
            "--public_key KEY.pub"
        )
    return (
        "\n## Signature\n\n"
        f"This revision is signed {how}. `{SIGNATURE_FILE}` is an OpenSSF Model Signing signature (a Sigstore "
        f"bundle) over the SHA-256 of every file of the revision but `{SIGNATURE_FILE}` itself (and the Hub's "
        "`.gitattributes`), this card included.\n\n"
        f"- Signed by: {signing.signer}\n\n"
        "Verify it before loading anything (hubsync checks it before it places a file):\n\n"
        f"```bash\n{hubsync}\n```\n\n"
        "or with the OpenSSF tool, on a download of the revision:\n\n"
        f"```bash\nhf download {repo_id} --revision {revision} --local-dir ckpt\n{tool}\n```\n"
    )


def check_signed_listing(signed: Mapping[str, str], listing: Sequence[tuple[str, str | None]], revision: str) -> None:
    """Refuse a revision whose files are not the signed ones: `signed` maps each signed path to its sha256, and
    `listing` is the revision's (path, sha256 the Hub lists for an LFS file, else None). A file added or changed
    after signing, or one that the signature covers and the revision lacks, is a SignatureError naming it. The
    sha256 of a file the Hub keeps in git (not LFS) is compared after its download (check_signed_file)."""
    listed = {path: sha for path, sha in listing if path not in NOT_SIGNED}
    for path in sorted(listed):
        if path not in signed:
            raise SignatureError(path, f"is on {revision}, and the signature does not cover it: added after signing")
    for path in sorted(signed):
        if path not in listed:
            raise SignatureError(path, f"is covered by the signature, and {revision} lacks it")
    for path, sha in sorted(listed.items()):
        if sha is not None and sha.lower() != signed[path].lower():
            raise SignatureError(path, CHANGED)


def check_signed_file(path: str, sha256: str, signed: Mapping[str, str]) -> None:
    """Refuse a downloaded file whose sha256 is not the signed one."""
    if signed.get(path, "").lower() != sha256.lower():
        raise SignatureError(path, CHANGED)
