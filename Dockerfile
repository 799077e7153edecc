# syntax=docker/dockerfile:1
# herald, built once, and the images compose.yaml runs, each with herald inside:
#   herald    herald alone (the director)
#   postgres  PostgreSQL 15 under `herald run --service pg`, /export declaring its data directory
#   pgpool    pgpool-II 4.3 (Debian bookworm's, with the PCP tools) under `herald run --service pgpool`
#   app       an application whose ENTRYPOINT is `herald run --`: /environment is mounted

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY src src
COPY integration integration
RUN cargo build --release --locked --bin herald

FROM debian:bookworm-slim AS herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
ENTRYPOINT ["herald"]

FROM postgres:15-bookworm AS postgres
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY examples/compose/export-pg /export
# herald is PID 1: it registers the server once it answers (pg_isready: a tcp check would pass
# while PostgreSQL is still starting up) and deregisters it before passing a stop signal on; the
# container stops when either ends.
ENTRYPOINT ["herald", "run", "--service", "pg", "--port", "5432", "--check", "exec:pg_isready -q -h 127.0.0.1 -p 5432", "--"]
CMD ["docker-entrypoint.sh", "postgres"]

FROM debian:bookworm-slim AS pgpool
RUN apt-get update \
 && apt-get install -y --no-install-recommends pgpool2 postgresql-client \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY examples/compose/pgpool /etc/herald
ENTRYPOINT ["herald", "run", "--service", "pgpool", "--port", "5432", "--check", "tcp", "--"]
CMD ["/etc/herald/start"]

FROM debian:bookworm-slim AS app
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/herald /usr/local/bin/herald
ENTRYPOINT ["herald", "run", "--"]
CMD ["sh", "-c", "while :; do psql \"$DATABASE_URL\" -X -Atc 'select inet_server_addr()'; sleep 5; done"]
