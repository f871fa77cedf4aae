"""Tools: the commands people run around the worker (may import anything; only stream/cli.py imports them)."""
