"""The commands: one module per command (``segflow.cli.<command>.main``) that parses its
arguments, composes its config and calls the library. ``python -m segflow.<command>`` and
the ``segflow-<command>`` console scripts run these."""
