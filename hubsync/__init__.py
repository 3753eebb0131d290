"""hubsync: push Trainer/PEFT checkpoints to the Hugging Face Hub as revisions, and pull them back to resume.

    import hubsync
    hubsync.push("out/my-run/checkpoint-1000", "me/my-model", training_state="keep")
    trainer.train(resume_from_checkpoint=hubsync.pull("me/my-model"))

The functions raise hubsync.errors.HubsyncError subclasses and print nothing; see hubsync.api for each one.
Importing hubsync is cheap: the functions load what they need when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hubsync.api import (
        Conversion,
        PruneOutcome,
        PushJob,
        convert_checkpoint,
        delete_tag,
        list_revisions,
        plan_prune,
        plan_push,
        preview_push,
        prune,
        pull,
        pull_checkpoint,
        push,
        render_card,
        repo_storage,
        tag,
        watcher,
        write_card,
    )
    from hubsync.callback import HubsyncCallback
    from hubsync.core.tags import TagChange
    from hubsync.hub.push import PushResult
    from hubsync.hub.revisions import RevisionInfo

__all__ = [
    "Conversion",
    "HubsyncCallback",
    "PruneOutcome",
    "PushJob",
    "PushResult",
    "RevisionInfo",
    "TagChange",
    "__version__",
    "convert_checkpoint",
    "delete_tag",
    "list_revisions",
    "plan_prune",
    "plan_push",
    "preview_push",
    "preview_retention",
    "prune",
    "pull",
    "pull_checkpoint",
    "push",
    "render_card",
    "repo_storage",
    "tag",
    "watcher",
    "write_card",
]

_HOMES = {
    "HubsyncCallback": "hubsync.callback",
    "PushResult": "hubsync.hub.push",
    "RevisionInfo": "hubsync.hub.revisions",
    "TagChange": "hubsync.core.tags",
}


def __getattr__(name: str) -> Any:
    """The public names, imported when first used (`import hubsync` stays light, and works without torch)."""
    if name == "errors":  # hubsync.errors, without an import of its own
        import hubsync.errors

        return hubsync.errors
    if name not in __all__ or name == "__version__":
        raise AttributeError(f"module 'hubsync' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOMES.get(name, "hubsync.api")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
