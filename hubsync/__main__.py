"""`python -m hubsync`: the same as the `hubsync` command."""

from hubsync.cli import main

main()
