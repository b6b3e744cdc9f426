"""One module per `simclr-embed` command, each defining `command` (simclr_embed/cli.py lists
them and imports only the one being run)."""
