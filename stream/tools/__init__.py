"""Operator and developer tools behind `agegate` subcommands; only stream/cli.py imports them."""
