"""What must never be published or printed: tokens of the Hub and of other services, and what names this machine
and its user (its host name, the user name, absolute paths under the home folder or the run).

One rule, used for every JSON file a push publishes (scrubbed copies, never the user's files) and for every line
the command line prints.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
# Tokens by their shape: the Hub's (user and organisation), GitHub's, OpenAI's and Anthropic's, AWS access key
# ids, Slack's, GitLab's, Google API keys and OAuth tokens, npm's, PyPI's, Stripe's, JSON web tokens, private key
# blocks; and what an Authorization header carries.
TOKEN_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}"
    r"|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)"
    r")"
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{8,}|(?<=[Bb]asic )[A-Za-z0-9+/=]{8,}"
)
# A key whose string value is a secret whatever it looks like (not `eos_token`: a tokenizer's tokens are words).
_SECRET_NAMES = (
    r"hub_token|hf_token|gh_token|github_token|auth_token|access_token|refresh_token|api_token|session_token"
    r"|api_?key|secret|password|passwd|passphrase|access_key|private_key|credentials?"
)
SECRET_KEY_RE = re.compile(rf"(?i)(?:^|[_-])(?:{_SECRET_NAMES})(?:$|[_-])|^token$")
# A key that names a service whose settings are mostly harmless (`wandb_project`): its value goes only when it is
# shaped as a key.
SERVICE_KEY_RE = re.compile(r"(?i)wandb")
# What transformers writes in place of a secret it leaves out (`"hub_token": "<HUB_TOKEN>"`).
PLACEHOLDER_RE = re.compile(r"<[A-Z_]+>")
# Secrets known by where they sit, whatever they look like: the password of a URL (`https://user:pw@host`), and
# the value of an environment variable named as a secret (`AWS_SECRET_ACCESS_KEY=...`, `DB_PASSWORD: ...`; upper
# case only, as variables are: a chat template's `{% set eos_token = ... %}` is left alone).
# The password runs to the last `@` before the host: people write `/` and `@` in it unescaped; the user may be empty
# (`redis://:pw@cache`).
URL_PASSWORD_RE = re.compile(r"(?<=://)([^/\s:@]{0,256}:)(?!<redacted>@)\S{1,1024}@(?=[^\s@/]+)")  # bounded: linear
_VALUE = r"""(?:"[^"\n]{4,}"|'[^'\n]{4,}'|(?!<redacted>)[^\s"']{4,})"""  # quoted (spaces and all) or one word
# Every name before `=` or `:` (a whole identifier, taken atomically so that a long one is read once: linear
# time); the name decides whether the value after it is a secret (secret_variable_name).
_ASSIGNED_NAME_RE = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z0-9_]++(?=\s*+[=:])")
_ASSIGNED_VALUE_RE = re.compile(r"\s*+[=:]\s*+(" + _VALUE + ")")
_UPPER_SECRET_WORDS = (
    *("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "APIKEY", "API_KEY", "ACCESS_KEY", "PRIVATE_KEY"),
    "CREDENTIAL",
)
# in lower case too, but not `token`: `{% set eos_token = "</s>" %}` is a chat template's
_ANY_CASE_SECRET_WORDS = (
    *("secret", "password", "passwd", "passphrase", "apikey", "api_key", "access_key", "private_key"),
    "credential",
)
_UPPER_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def secret_variable_name(name: str) -> bool:
    """An environment variable named as a secret: `AWS_SECRET_ACCESS_KEY`, `DB_PASSWORD`, `api_key`; upper case
    only for a token (`HF_TOKEN`, not a chat template's `eos_token`)."""
    if set(name) <= _UPPER_NAME and any(w in name for w in _UPPER_SECRET_WORDS):
        return True
    lowered = name.lower()
    return any(w in lowered for w in _ANY_CASE_SECRET_WORDS)


def _secret_values(text: str) -> Iterator[tuple[int, int]]:
    """Where the values of variables named as secrets lie in `text`, in order, each (start, end)."""
    end = 0
    for name in _ASSIGNED_NAME_RE.finditer(text):
        if name.start() < end or not secret_variable_name(name.group()):
            continue
        value = _ASSIGNED_VALUE_RE.match(text, name.end())
        if value is not None:
            end = value.end()
            yield value.start(1), end


def _redact_secret_variables(text: str) -> str:
    out, done = [], 0
    for start, end in _secret_values(text):
        out += [text[done:start], REDACTED]
        done = end
    return "".join([*out, text[done:]])


# wandb's API key: 40 hexadecimal digits, after its name in a text: `WANDB_API_KEY=...`, `wandb login ...`.
WANDB_IN_TEXT_RE = re.compile(r"(?i)(wandb[\w-]*(?:\s+login)?(?:\s*[=:]\s*|\s+)[\"']?)[0-9a-f]{40}(?![0-9a-f])")


@dataclass(frozen=True)
class Identity:
    """What names this machine and its user, and the tokens known to be secret (given, saved, in HF_TOKEN)."""

    home: str = ""
    runs: tuple[str, ...] = ()  # the run folder, as given and resolved: paths under it are published relative to it
    user: str = ""
    host: str = ""
    tokens: tuple[str, ...] = ()

    def words(self) -> list[str]:
        """Host and user names, the host also without its domain; names too short to tell are left out."""
        found = {self.host, self.host.split(".")[0], self.user}
        return sorted((w for w in found if len(w) >= 2 and w not in ("localhost", "user")), key=len, reverse=True)


def saved_tokens() -> list[str]:
    """The token `hf auth login` saved, and HF_TOKEN: whatever huggingface_hub would send without --token."""
    found = [os.environ.get("HF_TOKEN", ""), os.environ.get("HUGGING_FACE_HUB_TOKEN", "")]
    with suppress(OSError, UnicodeDecodeError):
        found.append(_token_path().read_text(encoding="utf-8"))
    return [t.strip() for t in found if len(t.strip()) >= 8]


def _token_path() -> Path:
    """Where huggingface_hub keeps the saved token. Its own constant once it is imported; before that (an error
    printed before any Hub call, or a bad HF_ENDPOINT that importing it would choke on) the same rule."""
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        return Path(hub.HF_TOKEN_PATH)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    home = os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(cache, "huggingface"))
    return Path(os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token"))


def this_machine(run: Path | None = None, tokens: Iterable[str | None] = ()) -> Identity:
    user = ""
    with suppress(Exception):  # no user name on some containers
        user = getpass.getuser()
    given = [t.strip() for t in tokens if t and len(t.strip()) >= 8]
    return Identity(
        home=str(Path.home()),
        runs=tuple(dict.fromkeys((str(run.absolute()), str(run.resolve())))) if run is not None else (),
        user=user,
        host=socket.gethostname(),
        tokens=tuple(dict.fromkeys(given + saved_tokens())),
    )


def redact(text: str, tokens: Iterable[str] = ()) -> str:
    """`text` with every known token and everything shaped like a token replaced by <redacted>."""
    text = TOKEN_RE.sub(REDACTED, WANDB_IN_TEXT_RE.sub(lambda m: m.group(1) + REDACTED, text))
    text = URL_PASSWORD_RE.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _redact_secret_variables(text)
    for token in sorted({t for t in tokens if len(t) >= 8}, key=len, reverse=True):
        text = text.replace(token, REDACTED)
    return text


def _path_text(text: str, who: Identity) -> str:
    """Paths under the run relative to it, under the home folder as ~/...; host and user names in a path (as
    transformers' `runs/<date>_<host>`) or as the whole value replaced. A word elsewhere is left alone: a
    tokenizer's vocabulary holds words that may happen to be a user's name."""
    folders = [(run, ".") for run in who.runs] + [(who.home, "~")]
    for folder, shown in sorted(folders, key=lambda f: len(f[0]), reverse=True):
        if len(folder.rstrip("/\\")) > 1:
            text = re.sub(re.escape(folder.rstrip("/\\")) + r"(?![A-Za-z0-9_.-])", shown, text)
    for word in who.words():
        marker = "<host>" if word in (who.host, who.host.split(".")[0]) else "<user>"
        if text == word:
            return marker
        if "/" in text or "\\" in text:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", marker, text)
    return text


def scrub_text(text: str, who: Identity) -> str:
    return _path_text(redact(text, who.tokens), who)


def scrub_value(value: Any, who: Identity, key: str = "") -> Any:
    """A JSON value with no token, no host or user name and no absolute path of this machine, at any depth, in
    keys as in values."""
    if isinstance(value, str):
        if key and SECRET_KEY_RE.search(key) and value.strip() and not PLACEHOLDER_RE.fullmatch(value):
            return REDACTED  # a key named as a secret: its value is one, whatever it looks like (`hunter2`)
        if key and SERVICE_KEY_RE.search(key) and re.fullmatch(r"[0-9a-fA-F]{32,}|\S{20,}", value.strip()):
            return REDACTED  # a service's key, holding something shaped as a secret
        return scrub_text(value, who)
    if isinstance(value, dict):
        return {scrub_text(str(k), who): scrub_value(v, who, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, who, key) for v in value]
    return value


_NAMED_IN_TEXT = re.compile(rf"(?i)wandb|{_SECRET_NAMES}|\"token\"")  # a key SECRET_KEY_RE may match


# What every secret `redact` finds begins with or holds, lower-cased: a piece of a large file with none of these
# (nor a token in use) holds none, and the regular expressions run only around each of them.
_CLUES = re.compile(
    r"hf_|api_org_|gh[pousr]_|github_pat_|sk-|akia|asia|xox[abposr]-|glpat-|aiza|ya29\.|npm_|pypi-|_live_|_test_"
    r"|eyj|-----begin|bearer |basic |://|wandb|token|secret|passw|passphrase|api_?key|access_key|private_key"
    r"|credential"
)
_CLUE_BEFORE = 4096  # the part of an assignment or URL that comes before its clue: a name, a URL's user
_CLUE_AFTER = 8192  # what follows a clue: a value (at most 1 KiB), a private key block


def holds_token(text: str, tokens: Iterable[str] = ()) -> bool:
    """Whether `redact` would change `text`, looked at only around the clues that every secret has."""
    known = [t for t in tokens if len(t) >= 8]
    if any(t in text for t in known):
        return True
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is two (İ): offsets differ, look at it whole
        return redact(text, known) != text
    window_end = -1
    for clue in _CLUES.finditer(lowered):
        if clue.start() < window_end - _CLUE_AFTER // 2:
            continue  # inside the window just looked at
        start, window_end = max(clue.start() - _CLUE_BEFORE, 0), clue.end() + _CLUE_AFTER
        window = text[start:window_end]
        if redact(window, known) != window:
            return True
    return False


def large_file_holds_token(path: Path, tokens: Iterable[str] = (), chunk: int = 8 << 20) -> bool:
    """Whether a file too large to parse holds a token of a known shape or one in use, read piece by piece (the
    pieces overlap, so a token across two is found)."""
    overlap = 4096
    tail = ""
    tokens = list(tokens)
    try:
        with path.open("rb") as f:
            while piece := f.read(chunk):
                text = tail + piece.decode("latin-1")
                if holds_token(text, tokens):
                    return True
                tail = text[-overlap:]
    except OSError:
        return False  # gone or unreadable: the upload says so
    return False


MAX_SCANNED_BYTES = 256 << 20  # files larger than this are weights or training state, not text someone wrote


def file_holds_token(path: Path, tokens: Iterable[str] = ()) -> bool:
    """Whether a file published byte for byte holds a token: a safetensors file in its header (its metadata), any
    other file of up to MAX_SCANNED_BYTES anywhere."""
    try:
        if path.name.lower().endswith(".safetensors"):
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = f.read(min(size, 100 << 20)).decode("utf-8", "replace")
            return redact(header, tokens) != header
        if path.stat().st_size > MAX_SCANNED_BYTES:
            return False
    except OSError:
        return False  # gone or unreadable: the upload says so
    return large_file_holds_token(path, tokens)


def might_hold_secrets(text: str, who: Identity) -> bool:
    """A quick look at a file's text: False when nothing in it could need scrubbing (most files)."""
    needles = [*who.tokens, *(f for f in (*who.runs, who.home) if len(f) > 1), *who.words()]
    return (
        any(n in text for n in needles)
        or any(rule.search(text) is not None for rule in (TOKEN_RE, URL_PASSWORD_RE, _NAMED_IN_TEXT))
        or next(_secret_values(text), None) is not None
    )


# Files whose strings are a vocabulary: words such as `/home` or a user's name are tokens of the model there, so
# only the tokens known to be secret are taken out of them.
VOCABULARIES = ("tokenizer.json", "vocab.json")


def scrubbed_json(name: str, raw: bytes, who: Identity) -> bytes | None:
    """A JSON file's scrubbed bytes, or None when nothing in it needs scrubbing (it is published unchanged)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.rsplit("/", 1)[-1] in VOCABULARIES:
        who = Identity(tokens=who.tokens)
        if not any(t in text for t in who.tokens):
            return None
    elif not might_hold_secrets(text, who):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # not JSON anything reads; still no token in it
        redacted = redact(text, who.tokens)
        return None if redacted == text else redacted.encode()
    clean = scrub_value(data, who) if who.home or who.runs else _tokens_only(data, who.tokens)
    if clean == data:
        return None
    return (json.dumps(clean, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _tokens_only(value: Any, tokens: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return REDACTED if value in tokens else value if not any(t in value for t in tokens) else redact(value, tokens)
    if isinstance(value, dict):
        return {_tokens_only(k, tokens): _tokens_only(v, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_tokens_only(v, tokens) for v in value]
    return value
