# recsvc API server: a slim, non-root image running `recsvc serve`.
#   docker build -t recsvc .
#   docker network create recsvc
#   docker run -d --name redis --network recsvc redis:7
#   docker run --rm --network recsvc -p 8000:8000 -e REDIS_URL=redis://redis:6379/0 \
#     -e RECSVC_SERVING__API_KEYS='{"<app-secret>": "app", "<admin-secret>": "admin"}' \
#     -v "$PWD/var/models:/srv/recsvc/var/models" recsvc
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY recsvc recsvc
COPY training training
COPY serving serving
COPY notifier notifier
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
# libgomp: OpenMP runtime used by faiss and implicit wheels.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 recsvc
COPY --from=build /install /usr/local
WORKDIR /srv/recsvc
COPY configs configs
RUN mkdir -p var/models var/data && chown -R recsvc:recsvc /srv/recsvc
USER recsvc
ENV RECSVC_SERVING__HOST=0.0.0.0 \
    OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["recsvc", "serve"]
