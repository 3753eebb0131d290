"""What huggingface.co refuses, as rules the local Hub's handlers apply: a model card's metadata (validate-yaml, and
a commit that adds the root README.md), regular files too large or binary for git, crowded folders, files over the
Hub's size limit, and branch and tag names.

Each rule is a pure function that answers with the Hub's own words for what is wrong (or nothing); the handlers turn
them into the Hub's answers. The rules are written here apart from hubsync's own checks of what it pushes
(`hubsync.core.metadata`): a local Hub that shared them would agree with any mistake in them. Only the tables of the
Hub's identifiers (licenses, pipeline types) are shared.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from hubsync.core.metadata import HUB_LICENSES, PIPELINE_TYPES
from hubsync.core.remote_paths import MAX_FILE_SIZE, MAX_FOLDER_ENTRIES, crowded_folder

from .front_matter import MAX_FRONT_MATTER, FrontMatterError, load_front_matter

_LICENSES = frozenset(HUB_LICENSES)
_PIPELINES = frozenset(PIPELINE_TYPES)
# The pattern the Hub's schema gives a model-index dataset type (its message quotes it, e.g. mteb issue #1111).
_DATASET_TYPE_RE = re.compile(r"^(?:[\w-]+/)?[\w\-.]+\Z")

# Sizes the Hub holds files to (hub-docs, "Storage limits"; the Hub's own messages say MiB).
MAX_BINARY_REGULAR = 1024 * 1024  # a binary file over this goes through LFS/Xet
MAX_REGULAR = 10 * 1024 * 1024  # any file over this goes through LFS/Xet
BINARY_SNIFF = 512  # bytes read for the binary sniff: the sample a client sends to preupload


# -- a model card's metadata -------------------------------------------------------------------------------------
def card_metadata_errors(content: str, repo_type: str = "model") -> list[str]:
    """The Hub's messages for what is wrong with a README's YAML front matter; empty when it would accept it."""
    if not content.startswith("---"):
        return []
    end = content.find("\n---", 3)
    if end < 0:
        return ["Unterminated YAML front matter"]
    if end - 3 > MAX_FRONT_MATTER:
        return [f"The YAML front matter is larger than {MAX_FRONT_MATTER} bytes"]
    try:
        meta = load_front_matter(content[3:end])
    except FrontMatterError as exc:
        return [f"Invalid YAML front matter: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ['"value" must be of type object']  # the Hub's schema message for metadata that is no mapping
    errors = []
    if "license" in meta and not _license_ok(meta["license"]):
        # huggingface.co's words (huggingface_hub issue #4218): a name from its list, or a list of them
        errors.append(f'"license" must be one of [{", ".join(HUB_LICENSES)}, array]')
    if repo_type == "model":
        if "pipeline_tag" in meta and meta["pipeline_tag"] not in _PIPELINES:
            errors.append(f'"pipeline_tag" must be one of [{", ".join(PIPELINE_TYPES)}]')
        if "model-index" in meta:
            errors.extend(model_index_errors(meta["model-index"]))
    return errors


def _license_ok(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(name, str) and name in _LICENSES for name in value)
    return isinstance(value, str) and value in _LICENSES


def model_index_errors(value: Any) -> list[str]:
    """The Hub's messages for a `model-index` not of its shape: a list of {name, results: [{task: {type},
    dataset: {type, name}, metrics: [{type, value}]}]} (hub-docs modelcard.md: the fields it marks Required)."""
    errors: list[str] = []

    def need(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        if key not in obj or obj[key] is None:
            errors.append(f'"{where}.{key}" is required')
            return None
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            errors.append(f'"{where}.{key}" must be {kind_name}')
            return None
        return obj[key]

    if not isinstance(value, list):
        return ['"model-index" must be an array']
    for i, model in enumerate(value):
        where = f"model-index[{i}]"
        if not isinstance(model, dict):
            errors.append(f'"{where}" must be of type object')
            continue
        need(model, "name", where, str, "a string")
        results = need(model, "results", where, list, "an array")
        for j, result in enumerate(results or []):
            at = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                errors.append(f'"{at}" must be of type object')
                continue
            task = need(result, "task", at, dict, "of type object")
            if task is not None:
                need(task, "type", f"{at}.task", str, "a string")
            dataset = need(result, "dataset", at, dict, "of type object")
            if dataset is not None:
                kind = need(dataset, "type", f"{at}.dataset", str, "a string")
                if kind is not None and not _DATASET_TYPE_RE.match(kind):
                    errors.append(
                        f'"{at}.dataset.type" with value "{kind}" fails to match the required pattern: '
                        r"/^(?:[\w-]+\/)?[\w-.]+$/"
                    )
                need(dataset, "name", f"{at}.dataset", str, "a string")
            metrics = need(result, "metrics", at, list, "an array")
            for k, metric in enumerate(metrics or []):
                mat = f"{at}.metrics[{k}]"
                if not isinstance(metric, dict):
                    errors.append(f'"{mat}" must be of type object')
                    continue
                need(metric, "type", mat, str, "a string")
                number = need(metric, "value", mat, (int, float, str), "one of [number, string]")
                if isinstance(number, float) and math.isnan(number):
                    errors.append(f'"{mat}.value" must be a number')
                elif isinstance(number, float) and math.isinf(number):
                    errors.append(f'"{mat}.value" cannot be infinity')
    return errors


def readme_commit_error(errors: list[str]) -> str:
    """How the Hub refuses a commit whose root README.md has metadata it does not accept."""
    return "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors)


# -- files ---------------------------------------------------------------------------------------------------------
def looks_binary(head: bytes) -> bool:
    """The Hub's binary sniff, on the first bytes only: the sample preupload sees. A commit is judged by the same
    bytes as its preupload, so a client that follows preupload's answer is never refused for it."""
    return b"\0" in head[:BINARY_SNIFF]


def regular_file_error(path: str, size: int, head: bytes) -> str | None:
    """The Hub's refusal of a file committed as a regular (git) file that has to go through LFS/Xet."""
    if size > MAX_REGULAR:
        return (
            "Your push was rejected because it contains files larger than 10 MiB. Please use "
            f"https://git-lfs.github.com/ to store large files. Offending files: {path}"
        )
    if size > MAX_BINARY_REGULAR and looks_binary(head):
        return (
            "Your push was rejected because it contains binary files. Please use "
            f"https://huggingface.co/docs/hub/xet to store binary files. Offending files: {path}"
        )
    return None


def file_size_error(path: str, size: int) -> str | None:
    """The Hub's refusal of a file over its per-file limit, before any of it is uploaded."""
    if size > MAX_FILE_SIZE:
        return (
            f"{path} is {size} bytes: files on the Hub are at most 50 GB (split it into smaller files, "
            "as transformers' save_pretrained(max_shard_size=...) does)"
        )
    return None


def crowded_folder_error(paths: Iterable[str]) -> str | None:
    """The Hub's refusal of a tree with more than MAX_FOLDER_ENTRIES files and folders directly in one folder."""
    crowded = crowded_folder(paths)
    if crowded is None:
        return None
    folder, count = crowded
    shown = folder or "the repository's root"
    return (
        f"Too many files and folders in {shown} ({count}): a folder on the Hub holds at most "
        f"{MAX_FOLDER_ENTRIES:,} entries. Please split it into subfolders."
    )


# -- branch and tag names ------------------------------------------------------------------------------------------
_REF_FORBIDDEN_RE = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_SHA_RE = re.compile(r"^[0-9a-f]{40}\Z")
MAX_REF_BYTES = 255


def ref_name(name: str, kind: str) -> str | None:
    """The branch or tag name `name` stands for (`kind`: "branch" or "tag"), or None when the Hub refuses it.

    `refs/heads/X` (a branch) and `refs/tags/X` (a tag) stand for X; any other `refs/` name (`refs/pr/1`) is
    refused, as on the Hub ("Invalid reference for a branch: refs/pr/5"). The rest are git's rules
    (git check-ref-format of refs/heads/NAME, as `git branch` applies them): no `..`, control characters,
    space, `~ ^ : ? * [ \\`, `@{`; no component that starts with `.` or ends with `.lock`; no leading `/` or `-`,
    trailing `/` or `.`, `//`; not `@` nor `HEAD`. And not 40 hex digits, which would read as a commit id."""
    prefix = "refs/heads/" if kind == "branch" else "refs/tags/"
    if name.startswith(prefix):
        name = name[len(prefix) :]
    elif name.startswith("refs/"):
        return None
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return None
    if (
        not name
        or size > MAX_REF_BYTES
        or _REF_FORBIDDEN_RE.search(name)
        or ".." in name
        or "@{" in name
        or "//" in name
        or name in ("@", "HEAD")
        or name.startswith(("-", "/"))
        or name.endswith(("/", "."))
        or any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))
        or _SHA_RE.match(name)
    ):
        return None
    return name


def ref_name_error(name: str, kind: str) -> str:
    return f"Invalid reference for a {kind}: {name}"
