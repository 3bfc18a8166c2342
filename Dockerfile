# edaflow in a container: runs the flow set mounted at /flows.
#
#   docker build -t edaflow .
#   docker run --rm -p 3000:3000 -v "$PWD/my-flows:/flows:ro" edaflow
#   docker run --rm -p 3000:3000 -v "$PWD/flows:/flows:ro" edaflow run /flows/orders.toml
#
# See docs/install.md.

# --- build -------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target folders are cache mounts, so a rebuild after a source edit
# fetches nothing and recompiles only edaflow. The target folder is not part of the
# image, so the binary is copied out of it, and stripped: the release profile keeps line
# tables for profiling on a developer's machine, the shipped binary does not need them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin edaflow \
    && strip --strip-debug -o /usr/local/bin/edaflow target/release/edaflow

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the trust roots for rediss:// (edaflow reads the system's). `apt-get
# clean` drops the downloaded packages and apt's caches, which a base image without
# Docker's apt cleanup hook would otherwise keep in the layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin edaflow
COPY --from=build /usr/local/bin/edaflow /usr/local/bin/edaflow
USER 10001
WORKDIR /flows
# Flow files usually listen on 127.0.0.1; in a container the HTTP producer must listen
# on every interface to be reachable through a published port.
ENV EDAFLOW_LISTEN=0.0.0.0:3000 \
    EDAFLOW_LOG_FORMAT=json
EXPOSE 3000
# bash is in the image, curl is not: a GET /healthz over bash's /dev/tcp, healthy on 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3000 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r status <&3 && [[ $status == *' 200 '* ]]"]
ENTRYPOINT ["edaflow"]
CMD ["run", "/flows"]
