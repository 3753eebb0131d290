"""The local Hub's application: which handler answers each route of the Hub's HTTP API, as huggingface_hub's client
calls it. Each API area is a module of handlers taking a `Call` and the route's match; the HTTP plumbing
(`protocol.py`) parses, routes with this table and answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import auth, commits, lfs, refs, repo_files, repos, xet
from .call import Call, Handler
from .protocol import Request, Response, Router

if TYPE_CHECKING:
    from .server import LocalHubServer

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"^/api/(?P<t>models|datasets|spaces)/" + _REPO  # the API's routes about one repository
_GIT_REPO = r"^/(?:(?P<t>datasets|spaces)/)?" + _REPO  # a repository's own URL: git-LFS, downloads

# The first route that matches a request's method and path answers it (405 when only other methods match).
ROUTES = Router[Handler](
    [
        # accounts: whoami, Trusted Publishing's token exchange
        ("GET", r"^/api/whoami-v2$", "whoami", auth.whoami),
        ("POST", r"^/oauth/token$", "oauth_token", auth.oauth_token),
        # repositories
        ("GET", r"^/api/(?P<t>models|datasets|spaces)$", "list_repos", repos.list_repos),
        ("POST", r"^/api/repos/create$", "create_repo", repos.create_repo),
        ("DELETE", r"^/api/repos/delete$", "delete_repo", repos.delete_repo),
        ("POST", r"^/api/validate-yaml$", "validate_yaml", repos.validate_yaml),
        ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info", repos.repo_info),
        ("PUT", _API_REPO + r"/settings$", "settings", repos.settings),
        # commits
        ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload", commits.preupload),
        ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit", commits.create_commit),
        # refs and history
        ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "create_branch", refs.create_branch),
        ("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "delete_branch", refs.delete_branch),
        ("POST", _API_REPO + r"/tag/(?P<rev>[^/]+)$", "create_tag", refs.create_tag),
        ("DELETE", _API_REPO + r"/tag/(?P<tag>[^/]+)$", "delete_tag", refs.delete_tag),
        ("GET", _API_REPO + r"/refs$", "refs", refs.list_refs),
        ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits", refs.list_commits),
        # files
        ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree", repo_files.list_tree),
        ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info", repo_files.paths_info),
        # git-LFS
        ("POST", _GIT_REPO + r"\.git/info/lfs/objects/batch$", "lfs_batch", lfs.lfs_batch),
        ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_upload", lfs.lfs_upload),
        ("GET", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_download", lfs.lfs_download),
        ("POST", r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$", "lfs_verify", lfs.lfs_verify),
        # the repository's LFS files: listing (storage used) and permanent deletion
        ("GET", _API_REPO + r"/lfs-files$", "lfs_files", lfs.list_lfs_files),
        ("POST", _API_REPO + r"/lfs-files/batch$", "lfs_files_batch", lfs.delete_lfs_files),
        # Xet: tokens for hf_xet and the address of the repository's Xet storage
        ("GET", _API_REPO + r"/xet-write-token/(?P<rev>[^/]+)$", "xet_write_token", xet.write_token),
        ("GET", _API_REPO + r"/xet-read-token/(?P<rev>[^/]+)$", "xet_read_token", xet.read_token),
        # downloads
        ("GET", _GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve", repo_files.resolve),
        ("HEAD", _GIT_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve", repo_files.resolve),
    ]
)


def answer(hub: LocalHubServer, request: Request) -> Response:
    """The answer to `request`; a StoreError for a request refused (404, 401, 413, ...)."""
    route, match = ROUTES.find(request.method, request.path)
    return route.handler(Call(hub, request), match)
