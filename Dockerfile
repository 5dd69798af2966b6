# The gateway image: migrates on start, then serves HTTP and WebSocket with uvicorn on port 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SLUICE_DATA_DIR=/data \
    PORT=8000

WORKDIR /app
COPY pyproject.toml ./
COPY config ./config
COPY proxy ./proxy
COPY providers ./providers
COPY settings_app ./settings_app
RUN pip install --no-cache-dir . && useradd --system --home /app sluice && mkdir -p /data && chown sluice /data
COPY locale ./locale
COPY manage.py ./

USER sluice
VOLUME ["/data"]
EXPOSE 8000
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0"]
