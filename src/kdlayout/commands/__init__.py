"""Subcommands of the ``kdlayout`` command line, one module each."""
