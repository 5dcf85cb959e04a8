# authgate: one static-ish binary on a slim Debian base.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY gateway.toml ./
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
WORKDIR /etc/authgate
EXPOSE 8080 9091
ENTRYPOINT ["authgate"]
CMD ["--config", "/etc/authgate/gateway.toml"]
