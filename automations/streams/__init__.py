"""Streams: the one consume loop (``consumer``), publishing (``publish``) and trimming
(``upkeep``)."""
