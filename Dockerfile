# syntax=docker/dockerfile:1
# Serving image: the gateway only (no Java, no Spark, no build tools in the final stage).
# The full multi-stage image with a jobs target is tracked in its own issue.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving serving
COPY features_online features_online
COPY batch batch
COPY observability observability
RUN python -m venv /opt/mlgate && /opt/mlgate/bin/pip install --no-cache-dir .

FROM python:3.11-slim AS serving
RUN useradd --create-home --uid 10001 mlgate
COPY --from=build /opt/mlgate /opt/mlgate
ENV PATH=/opt/mlgate/bin:$PATH MLGATE_HTTP__HOST=0.0.0.0 MLGATE_STATE_DIR=/home/mlgate/state
USER mlgate
WORKDIR /home/mlgate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["mlgate", "serve"]
