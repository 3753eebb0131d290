"""What `pip install hubsync` leaves out: the extras' packages, imported only where a feature needs them.

Every import of one sits inside `with needs_extra(feature, extra):`, so that a missing package is one
MissingExtraError that names the feature and the extra to install, never an ImportError traceback
(tests/test_install.py checks both, and that the light commands import none of them at module level).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hubsync.core.errors import MissingExtraError

# The top-level modules of each extra's distributions, as pyproject.toml's [project.optional-dependencies] has them.
_TRAIN = frozenset({"torch", "transformers", "peft", "accelerate"})
# sign: model_signing, and OpenSSL (pyopenssl), which model_signing 1.1 imports without declaring it.
_SIGN = frozenset({"model_signing", "OpenSSL", "cryptography", "sigstore"})
EXTRAS = {
    "train": _TRAIN,
    "deepspeed": _TRAIN | {"deepspeed"},
    "sign": _SIGN,
}  # deepspeed: hubsync[train] and deepspeed


@contextmanager
def needs_extra(feature: str, extra: str = "train") -> Iterator[None]:
    """Run the imports that `feature` needs from `extra`; MissingExtraError when one of the extra's packages is
    missing. A package missing that is not the extra's (a broken install) is left to raise as it is."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in EXTRAS[extra]:
            raise
        raise MissingExtraError(feature, extra, missing) from exc
