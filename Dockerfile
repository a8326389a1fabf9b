# matrix-provisioner: multi-stage build. The release binary is built with the
# same command CI runs (scripts/check-release.sh): cargo build --release --locked.
# Swagger UI assets come from a crates.io package (utoipa-swagger-ui's
# `vendored` feature), so the build needs crates.io and nothing else.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/matrix-provisioner /out/matrix-provisioner

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/matrix-provisioner \
      --create-home --shell /usr/sbin/nologin matrix-provisioner
COPY --from=build /out/matrix-provisioner /usr/local/bin/matrix-provisioner

# The same settings as outside a container (see README.md); only the listen
# address and the default SQLite location differ. Migrations are applied at
# start (`serve` migrates before it listens).
ENV BIND=0.0.0.0:7030 \
    DATABASE_URL=sqlite:///var/lib/matrix-provisioner/matrix-provisioner.db
USER matrix-provisioner
WORKDIR /var/lib/matrix-provisioner
VOLUME /var/lib/matrix-provisioner
EXPOSE 7030
# Slim images have no curl: the binary checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["matrix-provisioner", "healthcheck"]
# SIGTERM (docker stop) stops it gracefully within SHUTDOWN_TIMEOUT_SECONDS
# (30 by default): give `docker stop -t` a little more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["matrix-provisioner"]
CMD ["serve"]
