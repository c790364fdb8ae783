"""The click CLI: a thin layer over the Python API. Subcommands load lazily (click's LazyGroup
pattern), so `edge-slim ask` imports only what asking needs."""
