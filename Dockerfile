# The engine image: `automations serve` by default; `automations worker` for flow runs.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY automations ./automations
COPY triggers ./triggers
COPY actions ./actions
RUN pip install . && useradd --create-home --uid 10001 automations

USER automations
# Point it at your Redis; compose.yaml sets this to its own Redis service.
ENV AUTOMATIONS_REDIS_URL=redis://redis:6379/0
ENTRYPOINT ["automations"]
CMD ["serve"]
