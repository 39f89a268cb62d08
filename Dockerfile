# b3lb in a container: `docker build -t b3lb . && docker run -p 8000:8000 -e DATABASE_URL=... b3lb`
# Without DATABASE_URL the embedded PostgreSQL starts in /app/var (mount a volume there to keep it).
FROM python:3.11-slim

WORKDIR /app
COPY setup.py pyproject.toml README.md ./
COPY b3lb ./b3lb
COPY sql ./sql
COPY conf ./conf
RUN pip install --no-cache-dir -e . \
    && useradd --create-home --uid 10001 b3lb \
    && mkdir -p /app/var && chown b3lb:b3lb /app/var

USER b3lb
ENV B3LB_SERVER_LISTEN_ADDRESS=0.0.0.0 \
    B3LB_SERVER_PORT=8000 \
    B3LB_SERVER_DATA_DIR=/app/var
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/b3lb/ping').status != 200)"
CMD ["b3lb", "serve"]
