"""One module per scenario, each exposing ``async def run(bench) -> list[Row]``."""
