"""The web console: pages and a JSON API over the operator's read side (``insight``), the
automations store and the runtime, served by ``automations serve`` and ``automations ui``."""
