"""The exceptions hubsync raises. The library raises them; only the CLI turns them into messages."""

from __future__ import annotations

import json


class HubsyncError(Exception):
    """Base class of every error hubsync explains to its user."""


class NotACheckpointError(HubsyncError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not a checkpoint folder: {reason}")
        self.path = path
        self.reason = reason


class IncompleteCheckpointError(HubsyncError):
    """A checkpoint folder without trainer_state.json (still being written) or without weights."""

    def __init__(self, path: str, missing: str) -> None:
        super().__init__(f"{path} is not a complete checkpoint: it has no {missing}")
        self.path = path
        self.missing = missing


class InvalidRepoIdError(HubsyncError):
    def __init__(self, repo_id: str) -> None:
        super().__init__(f"invalid repository id {repo_id!r}")
        self.repo_id = repo_id


class InvalidRevisionError(HubsyncError):
    def __init__(self, revision: str, reason: str) -> None:
        super().__init__(f"invalid revision name {revision!r}: {reason}")
        self.revision = revision
        self.reason = reason


class SharedBranchError(HubsyncError):
    """Several checkpoints of one push would go to one branch, each replacing the one before."""

    def __init__(self, branch: str, first: str, second: str) -> None:
        super().__init__(f"{first} and {second} would both go to the branch {branch}")
        self.branch = branch
        self.first = first
        self.second = second


class InvalidTagError(InvalidRevisionError):
    """A --tag that cannot be a tag name, or would name the same ref as a branch."""


class HubError(HubsyncError):
    """Something went wrong while talking to a Hub."""

    def __init__(
        self,
        endpoint: str,
        detail: str = "",
        repo_id: str | None = None,
        revision: str | None = None,
        status: int | None = None,  # the HTTP status of the Hub's answer, when there was one
    ):
        super().__init__(detail or f"request to {endpoint} failed")
        self.endpoint = endpoint
        self.detail = detail
        self.repo_id = repo_id
        self.revision = revision
        self.status = status


class RemoteFileTooLargeError(HubError):
    """A file hubsync reads from a Hub into memory (trainer_state.json, main's index, ...) that is larger than
    `limit` (as announced, `size`), or whose answer went on past the size it announced (`announced`) or `limit`."""

    def __init__(
        self,
        endpoint: str,
        path: str,
        limit: int,
        repo_id: str | None,
        revision: str | None,
        size: int | None = None,
        announced: int | None = None,
        listed: bool = False,  # `limit` is the size the revision's tree lists (a file pull downloads)
    ) -> None:
        bound = f"{limit // 2**20} MiB" if isinstance(limit, int) and limit % 2**20 == 0 else f"{limit} bytes"
        if listed:
            told = (
                f"is announced as {size} bytes, the revision's tree lists {limit}"
                if size is not None
                else f"went on past the {limit} bytes the revision's tree lists"
            )
        elif size is not None:
            told = f"is {size} bytes, more than the {bound} hubsync reads of such a file"
        elif announced is not None:
            told = f"went on past the {announced} bytes the Hub announced"
        else:
            told = f"went on past the {bound} hubsync reads of such a file"
        super().__init__(endpoint, f"{path} {told}", repo_id, revision)
        self.path = path
        self.limit = limit
        self.size = size
        self.announced = announced
        self.told = told


class DownloadTooSlowError(HubError):
    """A download that did not end within the time allowed for its size (hub/download.py): a Hub that trickles."""

    def __init__(
        self, endpoint: str, path: str, size: int, received: int, seconds: int, repo_id: str, revision: str
    ) -> None:
        told = f"sent {received} of its {size} bytes in {seconds} s"
        super().__init__(endpoint, f"{path} {told}", repo_id, revision)
        self.path = path
        self.size = size
        self.received = received
        self.seconds = seconds
        self.told = told


class EndlessListingError(HubError):
    """A listing (a tree, a history) that goes on past what hubsync reads of one (`told`: past how many entries,
    pages or bytes, or a next page it was already sent): a Hub that is broken or hostile."""

    def __init__(self, endpoint: str, what: str, told: str, repo_id: str | None, revision: str | None) -> None:
        super().__init__(endpoint, f"the {what} {told}", repo_id, revision)
        self.what = what
        self.told = told


class HubTooSlowError(HubError):
    """A Hub whose answer (a file read into memory, a page of a listing) did not arrive whole within `seconds`."""

    def __init__(self, endpoint: str, what: str, seconds: float, repo_id: str | None, revision: str | None) -> None:
        shown = f"{seconds:g}" if isinstance(seconds, (int, float)) else str(seconds)
        super().__init__(endpoint, f"the {what} took more than {shown} s", repo_id, revision)
        self.what = what
        self.seconds = seconds
        self.took = f"took more than {shown} s"


class RateLimitedError(HubError):
    """The Hub rate-limited the requests and asked for a longer wait (`asked` seconds, after `waited` already)
    than the max-wait setting allows (`max_wait` seconds in all for one call)."""

    def __init__(
        self,
        endpoint: str,
        asked: int,
        waited: float,
        max_wait: float,
        repo_id: str | None = None,
        revision: str | None = None,
    ) -> None:
        after = f" more, after {waited:.0f} s" if waited >= 0.5 else ""
        detail = (
            f"rate-limited by the Hub, which asks to wait {asked} s{after}: longer than max-wait allows "
            f"({max_wait:g} s; raise max_wait=, HUBSYNC_MAX_WAIT or max-wait in hubsync.toml)"
        )
        super().__init__(endpoint, detail, repo_id, revision, status=429)
        self.asked = asked
        self.waited = waited
        self.max_wait = max_wait


class HubUnreachableError(HubError):
    """No answer from the endpoint at all (refused, DNS, timeout)."""


class XetStorageError(HubError):
    """The Xet storage a Hub hands out (its casUrl) failed, not the Hub: `kind` is "unreachable" (no connection to
    it), "refused" (it answered 401/403 to the upload token), "expired" (the Hub's token had expired when it was
    handed out), "broken" (an upload it cut off or answered with a server error), "unreadable" (a file it could
    not give back to a download) or "busy" (another process holds hf_xet's local storage: core/transient.py
    xet_storage_busy; retried). `storage` names it for people: its scheme and host, or "a local folder" (a
    local:// path is never shown)."""

    def __init__(
        self,
        endpoint: str,
        storage: str,
        kind: str,
        detail: str,
        repo_id: str | None = None,
        revision: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(endpoint, detail, repo_id, revision, status)
        self.storage = storage
        self.kind = kind


class TokenMissingError(HubError):
    """A write needs a token and none was found."""


class TrustedPublishingError(HubError):
    """HF_OIDC_RESOURCE asks for a token from the CI's OIDC id token, and none could be had."""


class TokenRejectedError(HubError):
    """The Hub answered 401 to the token."""


class PermissionDeniedError(HubError):
    """The token is valid but may not write to this repository."""


class RepoNotFoundError(HubError):
    """The repository does not exist, or is private and the token cannot see it."""


class RevisionNotFoundError(HubError):
    """The branch, tag or commit does not exist in the repository."""


class NotAHubError(HubError):
    """The endpoint answers, but not as a Hugging Face Hub."""


class RemoteFileGoneError(HubError):
    """A file that a revision lists but whose content the Hub no longer has: permanently deleted (a prune that
    freed the storage of a deleted branch's commits, HfApi.permanently_delete_lfs_files)."""


class CheckpointFileError(HubsyncError):
    """A file inside the checkpoint cannot be read or parsed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path = path
        self.reason = reason


class UnsafePickleError(HubsyncError):
    """A pickle needs more than tensors and plain containers to load: loading it could run code."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} needs {what} to load, which could run code")
        self.path = path
        self.what = what


class UnreadableWeightsError(HubsyncError):
    """The file is not a torch.save() archive of a state dict that hubsync can read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read the weights in {path}: {reason}")
        self.path = path
        self.reason = reason


class InvalidSafetensorsError(HubsyncError):
    """A safetensors file in the checkpoint is not one the format (and the safetensors library) accepts."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not a valid safetensors file: {reason}")
        self.path = path
        self.reason = reason


class ConflictingWeightsError(HubsyncError):
    """A checkpoint holds a pickled weights file and the safetensors file of the same name with different
    tensors: which one a reader loads depends on the library, so neither may be published silently."""

    def __init__(self, pickled: str, safetensors: str, reason: str) -> None:
        super().__init__(f"{pickled} and {safetensors} hold different weights: {reason}")
        self.pickled = pickled
        self.safetensors = safetensors
        self.reason = reason


class VerificationError(HubsyncError):
    """A converted file, read back, is not bit for bit what its source holds."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"the converted {path} does not match its source: {reason}")
        self.path = path
        self.reason = reason


class OutputExistsError(HubsyncError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path} already exists and is not empty")
        self.path = path


class BaseModelError(HubsyncError):
    """A card must name its base model by a Hub id; the checkpoint names none, or a local path."""

    def __init__(self, found: str | None) -> None:
        super().__init__("no base model" if found is None else f"the base model {found} is a local path")
        self.found = found


class TemplateError(HubsyncError):
    """A card template that cannot be read or rendered."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot render the template {path}: {reason}")
        self.path = path
        self.reason = reason


class RenderedTooLargeError(HubsyncError):
    """A file hubsync writes from a packaged template (the card, main's index) would pass the bounds every template
    renders within: a value it shows, from a checkpoint's files or a Hub, is too large."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class CommitConflictError(HubError):
    """The branch moved between reading its head and committing (412): plan again and retry."""


class SelectionError(HubsyncError):
    """--select names no checkpoint of the run."""

    def __init__(self, select: str, reason: str) -> None:
        super().__init__(f"cannot select {select!r}: {reason}")
        self.select = select
        self.reason = reason


def public(exists: bool) -> str:
    """How a public repository is named: one that is, or one that a push would create so (--public)."""
    return "is public" if exists else "would be created public (--public)"


class PublicTrainingStateError(HubsyncError):
    """--training-state keep into a public repository, without --allow-public-state."""

    def __init__(self, repo_id: str, exists: bool = True) -> None:
        super().__init__(f"{repo_id} {public(exists)} and training state was to be kept")
        self.repo_id = repo_id
        self.exists = exists  # False: the push would create it public (--public)


class CheckpointPushError(HubsyncError):
    """Pushing one of several checkpoints failed: `landed` are on the Hub, `not_pushed` (it first) are not."""

    def __init__(
        self, checkpoint: str, landed: tuple[str, ...], not_pushed: tuple[str, ...], cause: HubsyncError
    ) -> None:
        super().__init__(f"pushing {checkpoint} failed: {cause}")
        self.checkpoint = checkpoint
        self.landed = landed
        self.not_pushed = not_pushed
        self.cause = cause


class IncompletePushError(HubsyncError):
    """A checkpoint's commit landed on its branch, but tagging it or recording it in main's index failed after."""

    def __init__(self, checkpoint: str, revision: str, commit: str, cause: HubsyncError, result: object) -> None:
        super().__init__(f"{checkpoint} landed on {revision} ({commit[:12]}), then: {cause}")
        self.checkpoint = checkpoint
        self.revision = revision
        self.commit = commit
        self.cause = cause
        self.result = result  # the PushResult of what landed


class RetentionError(HubsyncError):
    """The push landed (`pushed`: its branches), but the retention policy's prune after it failed (`cause`): the
    checkpoint branches beyond the newest `keep` may still be there."""

    def __init__(self, repo_id: str, pushed: tuple[str, ...], keep: int, cause: HubsyncError) -> None:
        super().__init__(f"pushed {', '.join(pushed)} to {repo_id}, then the retention policy's prune failed: {cause}")
        self.repo_id = repo_id
        self.pushed = pushed
        self.keep = keep
        self.cause = cause


class MissingRepoError(HubsyncError):
    """No repository to push to: no --repo (repo_id), HUBSYNC_REPO or `repo` in the configuration file."""

    def __init__(self) -> None:
        super().__init__("no repository to push to")


class ConfigError(HubsyncError):
    """A configuration file or HUBSYNC_* variable hubsync cannot use."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnknownVariableError(ConfigError):
    """A HUBSYNC_* variable hubsync does not read, named like one it does: a misspelt setting."""

    def __init__(self, name: str, meant: str) -> None:
        super().__init__(name, f"hubsync reads no such variable (did you mean {meant}?)")
        self.name = name
        self.meant = meant


class SettingError(ConfigError):
    """A setting's value that is not one of the values it takes, from a flag, a variable or a file."""

    def __init__(self, source: str, setting: str, value: object, reason: str, label: str | None = None) -> None:
        shown = json.dumps(value, ensure_ascii=True) if isinstance(value, str) else repr(value)
        named = label or setting  # `tag "x"` for one item of `tags`
        said = f"{named} {reason}, not {shown}" if reason.startswith("must") else f"{named} {shown} {reason}"
        super().__init__(source, said)
        if source.endswith("="):  # a keyword argument of the library: `keep= must be ..., not -1`
            self.args = (f"{source} {said[len(named) + 1 :]}",)
        self.setting = setting
        self.value = value

    @property
    def from_flag(self) -> bool:
        return self.source.startswith("--") or self.source.endswith("=")  # a flag, or the library's keyword


class WiderExposureError(ConfigError):
    """A file or variable that would publish more than the command line asked for (a public repository, public
    training state): only the flag can do that."""

    def __init__(self, source: str, setting: str, said: str, effect: str, flag: str) -> None:
        super().__init__(source, f"{said}: that {effect}")
        self.setting = setting
        self.flag = flag


class InvalidLicenseError(HubsyncError):
    """A card license that the Hub does not accept: it refuses a README whose `license` is not on its list."""

    def __init__(self, license: str, source: str, suggestion: str | None) -> None:
        super().__init__(f"{source}: the Hub does not accept the license {license!r}")
        self.license = license
        self.source = source
        self.suggestion = suggestion


class TagExistsError(HubError):
    """A tag of that name already points to another commit; tags never move."""


class TagNotFoundError(HubError):
    """No tag of that name to delete (`detail`: what the repository holds instead)."""


class BranchNamedLikeTagError(HubError):
    """A push to a branch named like an existing tag: the name would mean two commits, and a pull of it could get
    either (the Hub resolves the branch first)."""


class UnpublishableNameError(HubsyncError):
    """A file of the checkpoint whose name the remote path rule refuses: a revision holding it could not be pulled."""

    def __init__(self, checkpoint: str, path: str, reason: str) -> None:
        super().__init__(f"{checkpoint}/{path}: {reason}")
        self.checkpoint = checkpoint
        self.path = path
        self.reason = reason


class NameTakenError(UnpublishableNameError):
    """A file of the checkpoint under the name of a file hubsync makes from another one (optimizer_0/dcp.json beside
    optimizer_0/.metadata): one of the two would silently replace the other."""


class HubLimitError(HubsyncError):
    """A checkpoint the Hub could not hold: a file over its size limit, a folder of more entries than it takes."""

    def __init__(self, checkpoint: str, path: str, reason: str) -> None:
        super().__init__(f"{checkpoint}/{path}: {reason}")
        self.checkpoint = checkpoint
        self.path = path
        self.reason = reason


class UnscrubbableFileError(HubsyncError):
    """A file that holds something shaped like a token (or the token in use) and that hubsync does not scrub: not
    JSON, or JSON too large to parse. `why` says which."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path} holds something shaped like a token, and {why}")
        self.path = path
        self.why = why


class UnsafeRemotePathError(HubsyncError):
    """A file path a Hub lists that hubsync never places or handles (core/remote_paths.py says which)."""

    def __init__(self, path: str, reason: str = "it leaves the checkpoint folder", revision: str | None = None) -> None:
        from .remote_paths import shown_remote_path

        where = f"{revision} holds" if revision else "the revision holds"
        super().__init__(f"{where} the path {shown_remote_path(path)}: {reason}")
        self.path = path
        self.reason = reason
        self.revision = revision


class PullVerificationError(HubsyncError):
    """A downloaded file is not what the revision's tree says (corrupted or truncated)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"the downloaded {path} {reason}")
        self.path = path
        self.reason = reason


class NoCheckpointRevisionError(HubsyncError):
    def __init__(self, repo_id: str) -> None:
        super().__init__(f"{repo_id} has no checkpoint revision")
        self.repo_id = repo_id


class NotACheckpointRevisionError(HubsyncError):
    """A revision to pull that holds no checkpoint (main, which holds the index, or one without weights)."""

    def __init__(self, repo_id: str, revision: str, reason: str) -> None:
        super().__init__(f"{repo_id} @ {revision} is not a checkpoint revision: {reason}")
        self.repo_id = repo_id
        self.revision = revision
        self.reason = reason


class HostileListingError(HubsyncError):
    """A revision's tree listing that no checkpoint has: a file and a folder of one name, a path listed twice, or
    more files than pull accepts."""

    def __init__(self, revision: str, reason: str) -> None:
        super().__init__(f"the tree of {revision} lists {reason}")
        self.revision = revision
        self.reason = reason


class NotEnoughSpaceError(HubsyncError):
    """The files a pull would write take more than the free space where they would go."""

    def __init__(self, path: str, needed: int, free: int) -> None:
        super().__init__(f"pulling needs {needed} bytes, {path} has {free} free")
        self.path = path
        self.needed = needed
        self.free = free


class PullTargetExistsError(HubsyncError):
    def __init__(self, path: str) -> None:
        super().__init__(f"{path} already exists and is not empty")
        self.path = path


class LocalFileError(HubsyncError):
    """A file or folder on this machine that the call could not read or write (the OSError it met is the cause)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputInsideCheckpointError(HubsyncError):
    """Output asked for inside the checkpoint folder, which hubsync never modifies."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} lies inside the checkpoint, which is never modified")
        self.path = path


class UnrepresentableStateError(HubsyncError):
    """Training state holding a type the pickle-free format cannot represent."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} holds a {what}, which hubsync's pickle-free format cannot represent")
        self.path = path
        self.what = what


class PicklesInPublicRepoError(HubsyncError):
    """--training-state-format pickle into a public repository: whoever loads those files runs them."""

    def __init__(self, repo_id: str, exists: bool = True) -> None:
        super().__init__(f"{repo_id} {public(exists)}, and pickled training state goes only into private repositories")
        self.repo_id = repo_id
        self.exists = exists


class DamagedStateError(HubsyncError):
    """Pulled pickle-free training state that is not what push writes: the files cannot be rebuilt from it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot rebuild the training state from {path}: {reason}")
        self.path = path
        self.reason = reason


class LinkOutsideCheckpointError(HubsyncError):
    """A link in the checkpoint leads outside it: hubsync uploads only what lies inside the folder."""

    def __init__(self, path: str, target: str) -> None:
        super().__init__(f"{path} is a link that leads outside the checkpoint ({target})")
        self.path = path
        self.target = target


class WatchStateError(HubsyncError):
    """The watch state file under the run folder cannot be read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read the watch state {path}: {reason}")
        self.path = path
        self.reason = reason


class NotARunFolderError(HubsyncError):
    """`hubsync watch` was given a checkpoint folder instead of the run folder that holds the checkpoints."""

    def __init__(self, path: str, reason: str, parent: str) -> None:
        super().__init__(f"{path} is a checkpoint folder, not a run folder: {reason}")
        self.path = path
        self.reason = reason
        self.parent = parent


class MissingExtraError(HubsyncError):
    """A feature that needs a package the light install leaves out (torch, transformers, ...): one of an extra's."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(f"{feature} needs {module}, from hubsync's {extra} extra, which is not installed")
        self.feature = feature
        self.extra = extra
        self.module = module


class SignatureError(HubsyncError):
    """A revision's signature (model.sig) is missing, unreadable, not made by the expected signer, or does not
    cover the revision's files as they are: `path` names the file at fault."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


class SigningError(HubsyncError):
    """A push cannot sign: its key, certificate or chain cannot be read or used (`path` names it)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot sign with {path}: {reason}")
        self.path = path
        self.reason = reason
