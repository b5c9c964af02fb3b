"""The runtime: ``@flow``/``@task`` and their state events, deployments, the scheduler and the
worker (DESIGN.md section 1, "Deployment"). Import submodules directly; nothing is loaded here."""
