"""Signed revisions (issue 20): push signs what it publishes, pull verifies before placing, ls and the card say so.

Throwaway EC P-256 keys made here; every Hub is the local one, over HTTP. Keyless (Sigstore) signing and verifying
need the Sigstore servers and are not tested (README, "Signing and verifying")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from huggingface_hub import HfApi, snapshot_download
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsync.cli import cli
from hubsync.core.errors import SignatureError
from hubsync.core.signing import Signing, Verifying, card_section, check_signed_listing
from hubsync.localhub import RunningHub
from hubsync.signing import key_fingerprint, sign_files, signed_files

REPO = "me/signed"
BRANCH = "checkpoint-20"


def run_cli(hub: RunningHub, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token, **(env or {})}
    )


def write_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A throwaway P-256 key pair: NAME.pem (private, unencrypted PKCS#8) and NAME.pub."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_key(tmp_path / "keys", "signing")


@pytest.fixture
def signed(tiny_run: Path, hub: RunningHub, keys: tuple[Path, Path]) -> Path:
    """checkpoint-20 with its training state (pull rebuilds optimizer.pt & co.), pushed signed."""
    result = run_cli(
        hub, "push", str(tiny_run / BRANCH), "--repo", REPO, "--training-state", "keep", "--sign-key", str(keys[0])
    )
    assert result.exit_code == 0, result.stderr
    return tiny_run / BRANCH


def pull_verified(hub: RunningHub, public: Path, to: Path) -> Result:
    return run_cli(hub, "pull", REPO, "--revision", BRANCH, "--to", str(to), "--verify", str(public))


def refused(result: Result, to: Path, *words: str) -> None:
    """One line that names the problem, exit 1, and nothing placed (not even the folder)."""
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: signature check failed"), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not to.exists()  # not even an empty folder: pull removes what it made


@pytest.mark.xet_and_lfs
def test_a_signed_push_pulls_back_verified_and_the_card_and_ls_say_who_signed(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    files = set(api.list_repo_files(REPO, revision=BRANCH))
    assert "model.sig" in files and "optimizer.json" in files  # the converted state is what is signed
    fingerprint = key_fingerprint(str(keys[1]), private=False)
    card = Path(api.hf_hub_download(REPO, "README.md", revision=BRANCH)).read_text()
    assert f"Signed by: the EC key {fingerprint}" in card
    assert f"hubsync pull {REPO} --revision {BRANCH} --verify KEY.pub" in card

    listed = run_cli(hub, "ls", REPO, "--json")
    assert [r["signed"] for r in json.loads(listed.stdout) if r["revision"] == BRANCH] == [True]
    table = run_cli(hub, "ls", REPO).stdout.splitlines()
    header, row = table[0].split(), next(line for line in table if line.startswith(BRANCH)).split()
    assert row[header.index("signed")] == "yes"

    result = pull_verified(hub, keys[1], tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert f"model.sig verified (signed by the key {fingerprint})" in result.stdout
    target = tmp_path / "out" / BRANCH
    assert (target / "optimizer.pt").is_file() and not (target / "model.sig").exists()
    assert (target / "adapter_model.safetensors").read_bytes() == (signed / "adapter_model.safetensors").read_bytes()

    again = pull_verified(hub, keys[1], tmp_path / "out")  # already there: the signature is still checked
    assert again.exit_code == 0 and "Already there" in again.stdout


def test_the_signature_is_checked_with_the_openssf_tool_as_the_card_says(
    signed: Path, hub: RunningHub, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The card's second way: a download of the revision (with .gitattributes and huggingface_hub's .cache) and
    model_signing's own command line."""
    ckpt = tmp_path / "ckpt"
    snapshot_download(REPO, revision=BRANCH, local_dir=ckpt, endpoint=hub.endpoint, token=hub.token)
    command = [sys.executable, "-m", "model_signing", "verify", "key", str(ckpt), "--signature"]
    command += [str(ckpt / "model.sig"), "--ignore-paths", str(ckpt / ".cache"), "--public_key", str(keys[1])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr

    (ckpt / "trainer_state.json").write_bytes((ckpt / "trainer_state.json").read_bytes() + b" ")
    assert subprocess.run(command, capture_output=True, text=True, check=False).returncode == 1


@pytest.mark.parametrize("path", ["adapter_model.safetensors", "trainer_state.json"])  # LFS, and kept in git
def test_one_byte_changed_on_the_hub_is_refused(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path, path: str
) -> None:
    data = bytearray(Path(api.hf_hub_download(REPO, path, revision=BRANCH)).read_bytes())
    data[len(data) // 2] ^= 1
    api.upload_file(path_or_fileobj=bytes(data), path_in_repo=path, repo_id=REPO, revision=BRANCH)

    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", f'"{path}"', "changed after signing")
    listed = run_cli(hub, "ls", REPO, "--json")  # still has model.sig: signed, which pull --verify checks
    assert [r["signed"] for r in json.loads(listed.stdout) if r["revision"] == BRANCH] == [True]


def test_a_file_added_after_signing_is_refused(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    api.upload_file(path_or_fileobj=b"print('hi')\n", path_in_repo="extra.py", repo_id=REPO, revision=BRANCH)
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", '"extra.py"', "added after signing")


def test_a_file_deleted_after_signing_is_refused(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    api.delete_file("scheduler.json", repo_id=REPO, revision=BRANCH)
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", '"scheduler.json"', "lacks it")


def test_a_revision_signed_by_another_key_is_refused(signed: Path, hub: RunningHub, tmp_path: Path) -> None:
    _, other = write_key(tmp_path / "keys", "other")
    refused(pull_verified(hub, other, tmp_path / "out"), tmp_path / "out", '"model.sig"', "was not made by the key")


def test_an_unsigned_revision_is_refused_and_ls_says_so(
    tiny_run: Path, hub: RunningHub, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    assert run_cli(hub, "push", str(tiny_run / BRANCH), "--repo", REPO).exit_code == 0
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", '"model.sig"', "is missing")
    listed = run_cli(hub, "ls", REPO, "--json")
    assert [r["signed"] for r in json.loads(listed.stdout)] == [False]


def test_a_hostile_signature_is_one_line(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.upload_file(path_or_fileobj=b'{"mediaType": [' * 5000, path_in_repo="model.sig", repo_id=REPO, revision=BRANCH)
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", '"model.sig"', "is not a signature")

    monkeypatch.setattr("hubsync.hub.pull.MAX_SIGNATURE_BYTES", 100)
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", '"model.sig"', "more than a signature")


def test_pushing_the_same_signed_checkpoint_again_commits_nothing(
    signed: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path]
) -> None:
    before = api.list_repo_refs(REPO)
    again = run_cli(hub, "push", str(signed), "--repo", REPO, "--training-state", "keep", "--sign-key", str(keys[0]))
    assert again.exit_code == 0, again.stderr
    assert api.list_repo_refs(REPO) == before


def test_the_configuration_can_ask_for_signing(
    tiny_run: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    result = run_cli(
        hub, "push", str(tiny_run / "checkpoint-10"), "--repo", REPO, env={"HUBSYNC_SIGN_KEY": str(keys[0])}
    )
    assert result.exit_code == 0, result.stderr
    assert "model.sig" in api.list_repo_files(REPO, revision="checkpoint-10")


def test_without_the_sign_extra_sign_key_says_what_to_install(
    checkpoint: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "model_signing", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "model_signing.signing", None)
    result = run_cli(hub, "push", str(checkpoint), "--repo", REPO, "--sign-key", str(keys[0]))
    assert result.exit_code == 1
    assert "pip install 'hubsync[sign]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not api.repo_exists(REPO)


def test_a_key_that_cannot_sign_is_refused_before_the_hub_changes(
    checkpoint: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path]
) -> None:
    result = run_cli(hub, "push", str(checkpoint), "--repo", REPO, "--sign-key", str(keys[1]))  # the public half
    assert result.exit_code == 1 and "not an unencrypted PEM private key" in result.stderr
    assert not api.repo_exists(REPO)


# The pure check, and the parser of a signature from the Hub.

SIGNED = {"a.safetensors": "ab" * 32, "README.md": "cd" * 32}


def test_the_listing_must_be_what_was_signed() -> None:
    ok = [("a.safetensors", "ab" * 32), ("README.md", None), ("model.sig", None), (".gitattributes", None)]
    check_signed_listing(SIGNED, ok, BRANCH)
    with pytest.raises(SignatureError, match="added after signing"):
        check_signed_listing(SIGNED, [*ok, ("x.bin", None)], BRANCH)
    with pytest.raises(SignatureError, match="lacks it"):
        check_signed_listing(SIGNED, ok[1:], BRANCH)
    with pytest.raises(SignatureError, match="changed after signing"):
        check_signed_listing(SIGNED, [("a.safetensors", "ef" * 32), *ok[1:]], BRANCH)


def test_the_card_section_names_the_signer_and_both_ways_to_verify() -> None:
    text = card_section(Signing("key", "k.pem", signer="the EC key SHA256:00"), REPO, BRANCH)
    assert "Signed by: the EC key SHA256:00" in text and "model_signing verify key ckpt" in text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.dictionaries(
            st.text(max_size=8),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
                max_leaves=10,
            ),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_bytes_as_model_sig_are_a_signature_error(data: bytes, keys: tuple[Path, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.sig"
    path.write_bytes(data)
    with pytest.raises(SignatureError):
        signed_files(path, Verifying("key", public_key=str(keys[1])))


def test_a_signature_lists_exactly_the_files_given(keys: tuple[Path, Path], tmp_path: Path) -> None:
    """Nothing is left out but model.sig: not .gitattributes or .github/ (which model_signing leaves out by
    default), and files of several folders keep their paths."""
    source = tmp_path / "src"
    (source / ".github").mkdir(parents=True)
    files = {"a.txt": b"a", ".gitattributes": b"g", ".github/x": b"x", "model.sig": b"old"}
    for name, data in files.items():
        (source / name).write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    signature = sign_files({k: source / k for k in files}, scratch, Signing("key", str(keys[0])))
    assert set(signed_files(signature, Verifying("key", public_key=str(keys[1])))) == {
        "a.txt",
        ".gitattributes",
        ".github/x",
    }


def write_certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA (NAME-ca.pem) and a code-signing certificate it issues (NAME-cert.pem) for NAME.pem."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private, _ = write_key(folder, name)
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} trainer")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path = folder / f"{name}-ca.pem", folder / f"{name}-cert.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return private, cert_path, ca_path


def test_a_push_signed_with_a_certificate_pulls_back_verified_by_its_chain(
    tiny_run: Path, hub: RunningHub, api: HfApi, tmp_path: Path
) -> None:
    private, cert, ca = write_certificates(tmp_path / "pki", "run")
    _, _, other_ca = write_certificates(tmp_path / "pki", "other")
    push = ["push", str(tiny_run / BRANCH), "--repo", REPO, "--sign-key", str(private), "--sign-certificate"]
    result = run_cli(hub, *push, str(cert), "--sign-chain", str(ca))
    assert result.exit_code == 0, result.stderr
    card = Path(api.hf_hub_download(REPO, "README.md", revision=BRANCH)).read_text()
    assert "Signed by: the certificate CN=run trainer" in card and "--verify-chain CHAIN.pem" in card

    pull = ["pull", REPO, "--revision", BRANCH, "--to", str(tmp_path / "out"), "--verify-chain"]
    wrong = run_cli(hub, *pull, str(other_ca))
    refused(wrong, tmp_path / "out", '"model.sig"', "was not made by a certificate of the chain")
    right = run_cli(hub, *pull, str(ca))
    assert right.exit_code == 0, right.stderr
    assert "signed with a certificate of the chain" in right.stdout


def test_hubsync_verify_makes_every_pull_check_the_signature(
    tiny_run: Path, hub: RunningHub, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    assert run_cli(hub, "push", str(tiny_run / BRANCH), "--repo", REPO).exit_code == 0  # unsigned
    result = run_cli(hub, "pull", REPO, "--to", str(tmp_path / "out"), env={"HUBSYNC_VERIFY": str(keys[1])})
    refused(result, tmp_path / "out", '"model.sig"', "is missing")


def test_a_dry_run_says_it_signs_and_deletes_no_signature(
    signed: Path, hub: RunningHub, keys: tuple[Path, Path]
) -> None:
    fingerprint = key_fingerprint(str(keys[0]), private=True)
    args = ["push", str(signed), "--repo", REPO, "--training-state", "keep", "--sign-key", str(keys[0]), "--dry-run"]
    result = run_cli(hub, *args)
    assert result.exit_code == 0, result.stderr
    assert f"  sign    model.sig over every file above, by the EC key {fingerprint}" in result.stdout
    assert "delete  model.sig" not in result.stdout


def test_keyless_signing_without_an_oidc_identity_is_one_line_and_changes_nothing(
    checkpoint: Path, hub: RunningHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, outside a GitHub workflow: refused before anything is converted, never an interactive login."""
    for name in ("SIGSTORE_IDENTITY_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = run_cli(hub, "push", str(checkpoint), "--repo", REPO, "--sign-keyless")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "no OIDC identity here" in result.stderr and "id-token: write" in result.stderr
    assert not api.repo_exists(REPO)


def test_the_action_input_sign_keyless_asks_for_keyless_signing() -> None:
    from hubsync.action import ActionInputError, push_arguments, read_inputs

    inputs = read_inputs({"INPUT_PATH": "out", "INPUT_REPO": "me/m", "INPUT_SIGN": "keyless"})
    assert push_arguments(inputs)["sign_keyless"] is True
    assert "sign_keyless" not in push_arguments(read_inputs({"INPUT_PATH": "out", "INPUT_REPO": "me/m"}))
    with pytest.raises(ActionInputError, match="input 'sign'"):
        read_inputs({"INPUT_PATH": "out", "INPUT_REPO": "me/m", "INPUT_SIGN": "key.pem"})


def test_a_signing_key_that_is_not_there_is_named_with_where_it_came_from(tiny_run: Path, hub: RunningHub) -> None:
    for env, source in (({"HUBSYNC_SIGN_KEY": "nokey.pem"}, "HUBSYNC_SIGN_KEY"), ({}, "--sign-key")):
        args = ["push", str(tiny_run / BRANCH), "--repo", REPO]
        result = run_cli(hub, *args, *([] if env else ["--sign-key", "nokey.pem"]), env=env)
        assert result.exit_code in (1, 2), result.output
        assert (
            source in result.stderr and "nokey.pem" in result.stderr and "must be a file that exists" in result.stderr
        )
        assert "Traceback" not in result.output


def test_an_older_signed_revision_under_a_newer_name_is_refused(
    tiny_run: Path, hub: RunningHub, api: HfApi, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Someone with write access and no key moves checkpoint-20 to checkpoint-10's signed commit: the files are
    signed, but for step 10; the signed trainer_state.json says so."""
    for name in ("checkpoint-10", BRANCH):
        assert run_cli(hub, "push", str(tiny_run / name), "--repo", REPO, "--sign-key", str(keys[0])).exit_code == 0
    older = next(b.target_commit for b in api.list_repo_refs(REPO).branches if b.name == "checkpoint-10")
    api.delete_branch(REPO, branch=BRANCH)
    api.create_branch(REPO, branch=BRANCH, revision=older)
    refused(pull_verified(hub, keys[1], tmp_path / "out"), tmp_path / "out", "is signed for step 10", BRANCH)
    by_commit = run_cli(hub, "pull", REPO, "--revision", older, "--to", str(tmp_path / "c"), "--verify", str(keys[1]))
    assert by_commit.exit_code == 0, by_commit.output  # by its commit id (or a tag) it is what it says: step 10


def test_a_verify_key_that_is_not_elliptic_curve_or_empty_is_one_line(
    signed: Path, hub: RunningHub, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = pull_verified(hub, rsa_pub, tmp_path / "out")
    assert result.exit_code == 1 and "it is not an elliptic-curve public key" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output and not (tmp_path / "out").exists()
    for args, env in ((["--verify="], {}), ([], {"HUBSYNC_VERIFY": ""})):
        empty = run_cli(hub, "pull", REPO, "--revision", BRANCH, "--to", str(tmp_path / "e"), *args, env=env)
        assert empty.exit_code == 2 and "is empty: name the signer's public key" in empty.stderr, empty.output
        assert not (tmp_path / "e").exists()
