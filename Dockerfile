# syntax=docker/dockerfile:1
# defender-operator: a static-ish release build on Debian bookworm, run on distroless as non-root.
#
#   docker build -t ghcr.io/detect-dev/defender-operator:0.1.0 .
#
# The runtime image has no shell and no package manager; the process runs as UID/GID 65532
# (distroless "nonroot"), which deploy/base/deployment.yaml also sets.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Only what the build reads: the manifests, the lock file and the sources. benches/ is listed in
# Cargo.toml and sandbox/ is a workspace member, so both must exist for the manifest to load;
# neither is compiled into the image.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY sandbox ./sandbox
COPY benches ./benches
# --locked: exactly the versions in Cargo.lock, or fail. --no-default-features: the operator
# without the `sandbox` subcommand, its API server and its Defender emulator. The caches keep the
# registry and the target directory between builds (BuildKit); the binary is copied out of the
# cached target.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features -p defender-operator --bin defender-operator \
    && install -D -m 0755 target/release/defender-operator /out/defender-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="defender-operator" \
      org.opencontainers.image.description="Pushes UNPROTECTED security-test findings to Microsoft Defender for Endpoint as indicators" \
      org.opencontainers.image.source="https://github.com/detect-dev/defender-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/defender-operator /usr/local/bin/defender-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/defender-operator"]
CMD ["run"]
