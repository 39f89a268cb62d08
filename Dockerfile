# b3lb in a container: `docker build -t b3lb . && docker run -p 8000:8000 -e DATABASE_URL=... b3lb`
# Without DATABASE_URL the embedded PostgreSQL starts in /app/var (mount a volume there to keep it).
# A regular install from a wheel: the package carries its SQL and example config (b3lb/_data), so
# the image does not depend on the source tree's layout.
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.py pyproject.toml README.md MANIFEST.in ./
COPY b3lb ./b3lb
COPY sql ./sql
COPY conf ./conf
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/b3lb-*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 b3lb \
    && mkdir -p /app/var && chown b3lb:b3lb /app/var
# Read from the working directory at start-up; replace it with a mounted file (or set B3LB_CONFIG).
COPY conf ./conf

USER b3lb
ENV B3LB_SERVER_LISTEN_ADDRESS=0.0.0.0 \
    B3LB_SERVER_PORT=8000 \
    B3LB_SERVER_DATA_DIR=/app/var
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/b3lb/ping').status != 200)"
CMD ["b3lb", "serve"]
