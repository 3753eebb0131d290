"""The one rule for file paths that a Hub lists: which ones hubsync places on disk or handles at all. Pure.

A Hub's tree listing is someone else's text. Pull turns each path into a file below the checkpoint folder, so a
path must stay below it on every file system pull may write to (Linux, macOS, Windows; case-sensitive or not),
and must not create a name that a tool acts on by itself when someone merely looks at, enters or opens the
folder. Push reads the same listings to decide what a branch already holds; ls to say what a revision is.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import UnsafeRemotePathError

# Names that a tool acts on by itself (compared case-insensitively, at any depth, as a folder or a file):
# - version control: `git status` (or a prompt that runs it) reads `.git/config`, whose core.fsmonitor runs a
#   command; a `.git` *file* is a gitdir link to such a folder elsewhere; `.gitmodules` names submodules that git
#   clones and configures; Mercurial's `.hg/hgrc` has hooks, `.hgsub` subrepositories; likewise Subversion,
#   Bazaar, darcs, Jujutsu, Sapling, Fossil, Pijul.
# - the shell on `cd`: direnv runs `.envrc`; autoenv runs `.env` (and many tools load it into the environment);
#   zsh-autoenv runs `.autoenv.zsh`.
# - editors on opening the folder: `.vscode` (tasks run on folder open, the interpreter to use), `.idea`.
# Home-folder files such as `.bashrc` or `.profile` act only in a home folder, which a checkpoint folder is not;
# `.gitattributes` and `.gitignore` run nothing by themselves (a filter needs git's own configuration), and the
# Hub puts a `.gitattributes` in every repository.
ACTED_ON_NAMES = frozenset(
    {
        ".git",
        ".gitmodules",
        ".hg",
        ".hgsub",
        ".svn",
        ".bzr",
        "_darcs",
        ".jj",
        ".sl",
        ".fslckout",
        "_fossil_",
        ".pijul",
        ".envrc",
        ".env",
        ".env.leave",
        ".autoenv.zsh",
        ".autoenv_leave.zsh",
        ".vscode",
        ".idea",
    }
)
# Windows device names: `nul`, `con.txt`, `COM1.json` open a device there, whatever the extension.
_WINDOWS_DEVICE = re.compile(r"(con|prn|aux|nul|conin\$|conout\$|com[0-9¹²³]|lpt[0-9¹²³])(\..*)?\Z", re.IGNORECASE)
# NTFS short names: `GIT~1` is `.git` there (git refuses them for the same reason).
_SHORT_NAME = re.compile(r"[^~]{1,6}~[0-9]+\Z")
_WINDOWS_RESERVED = frozenset('<>:"|?*')  # `:` also names an NTFS alternate stream (`.git::$INDEX_ALLOCATION`)

MAX_PART_BYTES = 255  # the longest file name ext4, APFS, NTFS and most others hold
MAX_PATH_BYTES = 1024  # leaves room under PATH_MAX (4096) for the folder pull writes into and the staging names
MAX_DEPTH = 32  # a checkpoint nests a few folders (DeepSpeed's global_stepN/); nothing needs 32


def remote_path_problem(path: object) -> str | None:
    """Why hubsync refuses a path a Hub lists (None: it is fine): anything that could land outside the folder
    it is placed in, differ from what it says on another file system, or be a name a tool acts on by itself."""
    if not isinstance(path, str) or not path:
        return "it is empty or not text"
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid text"
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"it is {len(parts)} levels deep, more than {MAX_DEPTH}"
    if size > MAX_PATH_BYTES:
        return f"it is {size} bytes long, more than {MAX_PATH_BYTES}"
    if any(not c.isprintable() and c != " " for c in path):
        return "it holds a control or invisible character"
    if "\\" in path:
        return "it holds a backslash (a folder separator on Windows)"
    if any(c in _WINDOWS_RESERVED for c in path):
        return "it holds a character Windows reserves"
    for part in parts:
        if part in ("", ".", ".."):
            return "it is absolute, or has an empty, . or .. part"
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            return f"a part of it is longer than {MAX_PART_BYTES} bytes"
        if part[-1] in ". ":
            return "a part of it ends with a dot or a space, which Windows drops"
        name = unicodedata.normalize("NFC", part).casefold()
        if name in ACTED_ON_NAMES:
            return f"{part} is a name that git, the shell or an editor acts on by itself"
        if _WINDOWS_DEVICE.match(name):
            return f"{part} is a device name on Windows"
        if _SHORT_NAME.match(name):
            return f"{part} may be a short name for another file on Windows"
    return None


def check_remote_path(path: str, revision: str | None = None) -> str:
    """`path` when hubsync may place and handle it, else UnsafeRemotePathError saying why."""
    problem = remote_path_problem(path)
    if problem is not None:
        raise UnsafeRemotePathError(path, problem, revision)
    return path


def shown_remote_path(path: str, limit: int = 80) -> str:
    """A path from a Hub as a message shows it: quoted, unprintable characters escaped, and cut in the middle
    when long, so that one line stays one line."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in path)
    if len(text) > limit:
        text = f"{text[: limit // 2]}…{text[-(limit // 2 - 1) :]}"
    return f'"{text}"'


# What the Hub holds at most (hub-docs, repository limits): a file of 50 GB, 10,000 entries in one folder. A push
# past either is refused when it commits, after the repository and branch were made: hubsync refuses it first.
MAX_FILE_SIZE = 50 * 1000**3
MAX_FOLDER_ENTRIES = 10_000  # files and folders directly in one folder


def crowded_folder(paths: Iterable[str]) -> tuple[str, int] | None:
    """A folder ("" for the root) of a tree of these file paths that holds more than MAX_FOLDER_ENTRIES files and
    folders directly, and how many; None when none does."""
    entries: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for depth in range(len(parts)):  # each folder on the way, and the file, is an entry of its parent
            entries.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    return next(((folder, len(held)) for folder, held in entries.items() if len(held) > MAX_FOLDER_ENTRIES), None)
