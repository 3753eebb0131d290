"""What a repository id is: the one rule that the library's checks and the local Hub share."""

from __future__ import annotations

import re

# NAMESPACE/NAME, each part as huggingface_hub's validate_repo_id has it: letters, digits, '.', '_', '-', up to
# 96 characters, no '--' or '..', no '-' or '.' at either end, and no '.git' at the end.
REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
REPO_ID_RE = re.compile(rf"({REPO_PART})/({REPO_PART})")  # fullmatch


def is_repo_id(repo_id: str) -> bool:
    """Whether `repo_id` is NAMESPACE/NAME as the Hub accepts it."""
    return (
        REPO_ID_RE.fullmatch(repo_id) is not None
        and not any(bad in repo_id for bad in ("..", "--"))
        and not any(p.startswith(("-", ".")) or p.endswith(("-", ".")) for p in repo_id.split("/"))
        and not repo_id.endswith(".git")
    )
