"""Sign the files a push commits, and read the signature of a revision a pull fetches: model_signing (the sign extra).

The plan and the checks are hubsync/core/signing.py; this module only runs model_signing and cryptography. Its
verifying half uses model_signing's verifiers directly (not `verifying.Config.verify`, which hashes a folder): pull
compares the signed manifest with the Hub's listing before downloading anything, then each downloaded file with it,
so the manifest is needed on its own. pyproject.toml pins model-signing to 1.1.x for that reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hubsync.core.errors import SignatureError, SigningError
from hubsync.core.paths import display_path
from hubsync.core.signing import SIGNATURE_FILE, SIGSTORE_GITHUB_ISSUER, Signing, Verifying
from hubsync.extras import needs_extra
from hubsync.files import temp_dir

FEATURE_SIGN = "signing a push (--sign-key, --sign-keyless)"
FEATURE_VERIFY = "verifying a pull (--verify)"
IDENTITY_TOKEN = "SIGSTORE_IDENTITY_TOKEN"  # an OIDC token for keyless signing, as sigstore-python's CLI takes it


def key_fingerprint(path: str, private: bool) -> str:
    """`SHA256:<hex>` of the public key's DER (SubjectPublicKeyInfo): what the card and pull show of a key. The key
    is read from `path` (PEM): a private key (its public half) or a public one."""
    with needs_extra(FEATURE_SIGN if private else FEATURE_VERIFY, "sign"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    shown = display_path(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(shown, exc.strerror or type(exc).__name__) from exc
    try:
        if private:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        kind = "an unencrypted PEM private key" if private else "a PEM public key"
        raise SigningError(shown, f"it is not {kind} ({exc})") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SigningError(shown, "it is not an elliptic-curve key (model_signing signs with P-256, P-384 or P-521)")
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def signer_of(signing: Signing) -> Signing:
    """`signing` with its signer said as the card says it: a key's fingerprint, a certificate's subject, or the
    GitHub workflow whose OIDC identity signs keyless. Checked when the push is planned: a missing extra, or a key
    that cannot sign, refuses it before anything is converted."""
    with needs_extra(FEATURE_SIGN, "sign"):
        import model_signing.signing  # noqa: F401
    if signing.method == "key":
        assert signing.private_key is not None
        return Signing(**{**signing.__dict__, "signer": f"the EC key {key_fingerprint(signing.private_key, True)}"})
    if signing.method == "certificate":
        assert signing.certificate is not None
        with needs_extra(FEATURE_SIGN, "sign"):
            from cryptography import x509
        try:
            cert = x509.load_pem_x509_certificate(Path(signing.certificate).read_bytes())
        except (OSError, ValueError) as exc:
            raise SigningError(display_path(signing.certificate), f"it is not a PEM certificate ({exc})") from exc
        return Signing(**{**signing.__dict__, "signer": f"the certificate {cert.subject.rfc4514_string()}"})
    if not os.environ.get(IDENTITY_TOKEN) and not os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
        raise SigningError(
            "--sign-keyless",
            "there is no OIDC identity here to sign with: run it in a GitHub workflow whose job has "
            f"`permissions: id-token: write`, or set {IDENTITY_TOKEN}",
        )
    workflow = os.environ.get("GITHUB_WORKFLOW_REF")
    who = (
        f"the GitHub workflow {workflow} (OIDC issuer {SIGSTORE_GITHUB_ISSUER})" if workflow else "a Sigstore identity"
    )
    return Signing(**{**signing.__dict__, "signer": who})


def sign_files(files: Mapping[str, Path], scratch: Path, signing: Signing) -> Path:
    """Sign exactly `files` (path in the repository -> the file that is committed there) and return the signature's
    path (a new folder in `scratch`). model_signing hashes a folder: it gets one of links to those files, with
    nothing ignored but model.sig itself (not even .git* paths)."""
    with needs_extra(FEATURE_SIGN, "sign"):
        import model_signing.hashing
        import model_signing.signing
    work = temp_dir(scratch, "sign")
    tree = work / "revision"
    for path, source in files.items():
        if path == SIGNATURE_FILE:
            continue  # a checkpoint's own model.sig: replaced by this one
        link = tree / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source.resolve(), link)
    tree.mkdir(exist_ok=True)
    hashing = (
        model_signing.hashing.Config()  # type: ignore[no-untyped-call]
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
        .set_allow_symlinks(True)
    )
    config = model_signing.signing.Config().set_hashing_config(hashing)  # type: ignore[no-untyped-call]
    try:
        if signing.method == "key":
            assert signing.private_key is not None
            config.use_elliptic_key_signer(private_key=signing.private_key)
        elif signing.method == "certificate":
            assert signing.private_key is not None and signing.certificate is not None
            config.use_certificate_signer(
                private_key=signing.private_key,
                signing_certificate=signing.certificate,
                certificate_chain=signing.chain,
            )
        else:  # never model_signing's fallback, an interactive OAuth flow in a browser: CI would wait forever
            config.use_sigstore_signer(use_ambient_credentials=False, identity_token=_identity_token())
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(display_path(signing.private_key or "Sigstore"), str(exc) or type(exc).__name__) from exc
    signature = work / SIGNATURE_FILE
    try:
        config.sign(tree, signature)
    except Exception as exc:  # Sigstore's (keyless) raise their own kinds: identity, network, transparency log
        if signing.method != "sigstore" and not isinstance(exc, OSError | ValueError):
            raise
        raise SigningError(display_path(signing.private_key or "Sigstore"), str(exc) or type(exc).__name__) from exc
    return signature


def _identity_token() -> str:
    """The OIDC token keyless signing presents to Sigstore: IDENTITY_TOKEN, else the ambient one (a GitHub
    workflow's, with id-token: write), detected as sigstore-python detects it."""
    with needs_extra(FEATURE_SIGN, "sign"):
        from sigstore.oidc import detect_credential
    token = os.environ.get(IDENTITY_TOKEN) or None
    try:
        token = token or detect_credential()
    except Exception as exc:  # sigstore's IdentityError: the workflow lacks the permission, say
        raise SigningError("--sign-keyless", _brief(exc)) from exc
    if not token:
        raise SigningError(
            "--sign-keyless", "no OIDC identity token was found (GitHub: `permissions: id-token: write`)"
        )
    return token


def signed_files(signature: Path, verifying: Verifying) -> dict[str, str]:
    """The files a signature covers (path -> sha256), once it is checked to be the expected signer's; a
    SignatureError for a file that is no signature model_signing reads (it came from the Hub: any bytes), one
    made by another signer, or one over another kind of manifest (shards, another hash)."""
    with needs_extra(FEATURE_VERIFY, "sign"):
        from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore, sign_sigstore_pb
    verifier: Any
    try:
        if verifying.method == "key":
            assert verifying.public_key is not None
            verifier = sign_ec_key.Verifier(Path(verifying.public_key))
        elif verifying.method == "certificate":
            verifier = sign_certificate.Verifier([Path(c) for c in verifying.chain])
        else:
            assert verifying.identity is not None and verifying.issuer is not None
            verifier = sign_sigstore.Verifier(identity=verifying.identity, oidc_issuer=verifying.issuer)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: a key that is not EC (RSA)
        shown = display_path(verifying.public_key or (verifying.chain[0] if verifying.chain else "Sigstore"))
        said = "it is not an elliptic-curve public key" if isinstance(exc, AttributeError) else _brief(exc)
        raise SigningError(shown, said) from exc
    except Exception as exc:  # sigstore's TUFError and others: its servers, unreachable here, or refusing
        raise SigningError("Sigstore", f"its trust root could not be had ({_brief(exc)})") from exc
    reader = sign_sigstore.Signature if verifying.method == "sigstore" else sign_sigstore_pb.Signature
    try:
        bundle = reader.read(signature)
    except Exception as exc:  # JSON, protobuf and pydantic errors of any kind: the file is the Hub's
        raise SignatureError(SIGNATURE_FILE, f"is not a signature model_signing can read ({_brief(exc)})") from exc
    try:
        manifest = verifier.verify(bundle)
    except Exception as exc:  # a wrong key raises cryptography's InvalidSignature, others ValueError
        raise SignatureError(SIGNATURE_FILE, f"was not made by {_expected(verifying)} ({_brief(exc)})") from exc
    method = manifest.serialization_type.get("method")
    hash_type = manifest.serialization_type.get("hash_type")
    if method != "files" or hash_type != "sha256":
        said = f"signs {method} by {hash_type}, and hubsync checks whole files by sha256"
        raise SignatureError(SIGNATURE_FILE, said)
    out: dict[str, str] = {}
    for item in manifest.resource_descriptors():
        if item.digest.algorithm != "sha256":
            raise SignatureError(SIGNATURE_FILE, f"lists {item.identifier!r} by {item.digest.algorithm}, not sha256")
        out[item.identifier] = item.digest.digest_hex
    return out


def _expected(verifying: Verifying) -> str:
    if verifying.method == "key":
        assert verifying.public_key is not None
        return f"the key {display_path(verifying.public_key)}"
    if verifying.method == "certificate":
        return "a certificate of the chain " + ", ".join(display_path(c) for c in verifying.chain)
    return f"{verifying.identity} (issuer {verifying.issuer})"


def _brief(exc: BaseException) -> str:
    """An exception of a parser as one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
