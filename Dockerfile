# The reenrich worker image. `docker compose` builds it; see docker-compose.yml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 reenrich
USER reenrich
# Logs are JSON lines on stderr (not a terminal): ship them as they are.
ENTRYPOINT []
CMD ["reenrich", "--help"]
