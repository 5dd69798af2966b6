# The gateway image: migrates on start, then serves HTTP and WebSocket with uvicorn on port 8000.
# Two stages: the dependencies are installed into a virtual environment without pip or setuptools, and
# only that environment and the application's own files reach the final image (no build tools, no caches).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies alone, from pyproject.toml (the package list matches nothing without the sources): this
# layer is rebuilt only when the dependencies change, not on every change of the code.
WORKDIR /src
COPY pyproject.toml ./
RUN python -m venv --without-pip /venv \
    && pip --python /venv/bin/python install . \
    && pip --python /venv/bin/python uninstall --yes sluice
WORKDIR /app
COPY manage.py ./
COPY config ./config
COPY proxy ./proxy
COPY providers ./providers
COPY settings_app ./settings_app
COPY identity ./identity
COPY audit ./audit
COPY portal ./portal
COPY locale ./locale
RUN /venv/bin/python -m compileall -q -j 0 config proxy providers settings_app identity audit

FROM python:3.11-slim
# The command and environment that docker-compose.yml runs it with; WEB_CONCURRENCY is the number of
# worker processes (several need REDIS_URL). No secret is baked in: SECRET_KEY comes from the
# environment, or is generated once into the /data volume.
ENV PATH=/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SLUICE_DATA_DIR=/data \
    PORT=8000 \
    WEB_CONCURRENCY=1
RUN groupadd --gid 10001 sluice \
    && useradd --uid 10001 --gid sluice --no-log-init --home-dir /app --no-create-home --shell /usr/sbin/nologin sluice \
    && mkdir /data && chown sluice:sluice /data
COPY --from=build /venv /venv
COPY --from=build /app /app
WORKDIR /app

USER sluice
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0"]
