# One image for every redcell process: raft-meta, cell, router, cellctl and fake-cashier,
# all in /usr/local/bin. Kubernetes manifests (k8s/) pick the binary with `command:`.
#
#   docker build -t redcell:dev .
#
# The builder is pinned to bookworm, the runtime's Debian release, so the binaries link
# against the glibc they will run on (plain `rust:1` follows Debian's newest release).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && for bin in raft-meta cell router cellctl fake-cashier; do \
      cp "target/release/$bin" /out/; \
    done

FROM debian:bookworm-slim
# A fixed numeric uid/gid so Kubernetes can check runAsNonRoot and give volumes fsGroup 10001.
RUN groupadd --system --gid 10001 redcell \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/redcell --create-home \
      --shell /usr/sbin/nologin redcell
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/redcell
# router 7000, raft-meta 7001, cell 7100
EXPOSE 7000 7001 7100
CMD ["cell", "--help"]
