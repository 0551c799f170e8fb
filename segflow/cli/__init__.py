"""Thin entry points: parse the command line, compose the config, call the library."""
