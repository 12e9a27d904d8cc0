# syntax=docker/dockerfile:1
# Tollgate in a container: built with the pinned toolchain (Cargo.toml's rust-version) and the
# lockfile, exactly as CI builds it, and run as a non-root user on a distroless base (glibc and
# libgcc only: TLS is rustls, so there is no OpenSSL, no shell and no curl in the image).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The whole context: .dockerignore leaves out tests, target, data and secrets, so a new source
# directory (templates, assets) is never missed.
COPY . .
# The registry and target directories are build caches, so a source change rebuilds only
# Tollgate; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && mkdir -p /out/data \
    && cp target/release/tollgate /out/tollgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /usr/local/bin/tollgate
# The SQLite volume, owned by the image's non-root user (65532) so it can write there.
COPY --from=build --chown=65532:65532 /out/data /data
# Inside a container the server must listen on every interface; SQLite lives on the volume.
# Compose and Kubernetes set DATABASE_URL to MySQL or PostgreSQL instead.
ENV LISTEN_ADDR=0.0.0.0:3000 \
    DATABASE_URL=sqlite:///data/tollgate.db
WORKDIR /data
VOLUME ["/data"]
USER 65532:65532
EXPOSE 3000
# `tollgate healthcheck` asks /healthz on LISTEN_ADDR (the image has no curl).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/tollgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
