# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image with only CA
# certificates added (TLS to Fastly and amqps:// brokers uses rustls with the system roots).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config ./config
COPY src ./src
# Cargo reads every target the manifest declares, so the benchmark sources must be present
# even though only the binary is built.
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fastly-purge-worker \
    && cp target/release/fastly-purge-worker /usr/local/bin/fastly-purge-worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home worker
COPY --from=build /usr/local/bin/fastly-purge-worker /usr/local/bin/fastly-purge-worker
USER 10001
# SIGTERM starts a graceful shutdown: no new deliveries, jobs in progress finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastly-purge-worker"]
CMD ["run"]
