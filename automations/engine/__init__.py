"""The trigger engine: events in, window state in Redis, firings out (``engine`` is the loop;
``intake``, ``follows``, ``plan``, ``specs``, ``window`` + ``lua/``, ``outbox``, ``timer``)."""
