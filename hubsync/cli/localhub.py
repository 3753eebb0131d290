"""`hubsync localhub`: serve a Hub-compatible server on this machine (hubsync.localhub)."""

from __future__ import annotations

import re
import sys

import click

from hubsync.core.paths import display_path

from .app import cli
from .output import echo


@cli.command()
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder that holds the Hub's repositories (created when missing).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on; 0 picks a free one."
)
@click.option("--user", default="me", show_default=True, help="The user the token belongs to.")
@click.option("--token", help="Token to accept [default: the one stored under --root, else a new one].")
@click.option(
    "--org",
    "orgs",
    multiple=True,
    metavar="NAME",
    help="Make --user a member of organization NAME (created when missing), which it may then create repositories "
    "in and push to (e.g. --repo NAME/model); repeat for more. Only members write in an organization.",
)
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
@click.option(
    "--xet/--no-xet",
    default=None,
    help="Offer Xet storage, as huggingface.co does (clients with hf_xet upload and download through it); "
    "--no-xet serves git-LFS only, as most self-hosted Hubs. The storage is a folder on this machine, so Xet "
    "needs clients on it [default: on when clients reach the Hub at a loopback address, else off].",
)
@click.option(
    "--public-url",
    help="Address clients reach the server at through a proxy in front of it, for the links it hands out (the "
    "listening address is then printed on stderr) [default: http://HOST:PORT].",
)
def localhub(
    root: str,
    host: str,
    port: int,
    user: str,
    token: str | None,
    orgs: tuple[str, ...],
    verbose: bool,
    xet: bool | None,
    public_url: str | None,
) -> None:
    """Serve a Hub-compatible server on this machine, storing everything under --root.

    Prints HF_ENDPOINT=... and HF_TOKEN=..., one per line, then serves in the foreground: send them to a
    file and read it from another shell (`hubsync localhub > hub.env &`, then `export $(cat hub.env)`).

    \b
    Example:
      hubsync localhub --root /tmp/hub --port 8000
      hubsync localhub --root /tmp/hub --org my-team
    """
    from hubsync.localhub import LocalHubServer, Store
    from hubsync.localhub.store import StoreError

    try:
        store = Store(root)
        token = store.ensure_user(user, token)
        for org in orgs:
            store.create_org(org, [user])
        if public_url is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(?::[0-9]+)?/?", public_url):
            raise click.BadParameter("give a URL such as http://hub.example:8000", param_hint="--public-url")
        server = LocalHubServer(
            store,
            host,
            port,
            verbose=verbose,
            public_url=public_url,
            on_handler_error=lambda error: echo(f"localhub: internal error, a bug: {error.summary}", err=True),
            xet=xet,
        )
    except StoreError as exc:
        raise click.UsageError(exc.message) from exc
    except ValueError as exc:  # --xet where clients are not on this machine
        raise click.UsageError(f"{exc}: drop --xet, or serve on 127.0.0.1") from exc
    except OSError as exc:
        if exc.filename:
            raise click.UsageError(f"cannot use --root {display_path(root)} ({exc.strerror})") from exc
        raise click.UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    if store.tightened:
        echo(f"localhub: made {store.tightened} entries under --root private to this account", err=True)
    if public_url is not None:  # HF_ENDPOINT names the proxy; where to point it is said here, off stdout
        echo(f"localhub: listening on http://{server.url_host} (clients use {server.url})", err=True)
    if xet is None and server.xet is None:
        echo("localhub: no Xet storage (a folder on this machine): clients elsewhere upload through git-LFS", err=True)
    echo(f"HF_ENDPOINT={server.url}")
    echo(f"HF_TOKEN={token}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
