"""Puts ``tests/`` on sys.path (pytest's prepend import mode adds conftest directories), so helpers
shared across test folders, such as ``demo_reference``, import by name."""
