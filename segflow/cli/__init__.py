"""Command-line entry points: each parses its arguments, composes, and calls the library."""
