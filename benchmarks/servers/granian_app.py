"""The service as a module-level ASGI app, for servers without a factory flag (granian):
`granian --interface asgi simclr_embed.benchmarks.servers.granian_app:app`. Importing it loads the
bundle named by SIMCLR_EMBED_BUNDLE."""

from simclr_embed.service.app import app_from_env

app = app_from_env()
