"""Dispatch: firings in, actions out (``dispatcher`` is the pipeline; ``ledger``, ``retries``,
``invocation``, ``ports``, ``notifiers``, ``logs``, ``executors/``)."""
