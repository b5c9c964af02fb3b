"""Read-side answers for operators (CLI and console): why an event did or did not count, what
fired and what its actions did, dead letters, flow runs. Built on the engine's own code."""
