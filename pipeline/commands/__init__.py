"""One module per ``shoal`` sub-command; each defines ``register(subparsers)`` and sets ``func``."""
