# authgate: one binary on a slim Debian base, running as an unprivileged user.
#   docker build -t authgate .      (or `docker compose up --build`, see docker-compose.yml)

FROM rust:1-bookworm AS build
# pingora-core builds libz-ng-sys, which needs cmake.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, against a stub crate: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. The stub's own artifacts are then removed so
# the real crate is compiled below.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/authgate* target/release/deps/authgate-* \
           target/release/deps/libauthgate-* target/release/.fingerprint/authgate-*

# The crate itself (migrations and gateway.toml are compiled in).
COPY src ./src
COPY migrations ./migrations
COPY gateway.toml ./
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 authgate \
 && useradd --system --uid 10001 --gid authgate --home-dir /var/lib/authgate --create-home \
            --shell /usr/sbin/nologin authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
# The reference config (embedded mode: SQLite + in-process sessions + the demo app); mount
# your own over it, as docker-compose.yml does.
COPY gateway.toml /etc/authgate/gateway.toml
# The working directory is the one place the gateway may write: the embedded mode's SQLite
# file (`sqlite://authgate.db` is relative to it) and its lock file.
WORKDIR /var/lib/authgate
USER 10001:10001
EXPOSE 8080 9091
ENTRYPOINT ["authgate"]
CMD ["--config", "/etc/authgate/gateway.toml"]
