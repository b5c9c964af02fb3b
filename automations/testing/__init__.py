"""Automation unit tests, in the spirit of ``promtool test rules``: a YAML file of input
events at relative times and the firings expected from them, run offline (no Redis) by
``automations test TESTFILE``. ``model`` is the format, ``load`` reads and checks it,
``runner`` evaluates (``automations.dry_run``) and matches, ``render`` renders the actions
offline, ``report`` writes the diff. Format: ``docs/testing-automations.md``.
"""
