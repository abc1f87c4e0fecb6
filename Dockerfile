# syntax=docker/dockerfile:1
#
# extauthz image: a static Go binary on distroless, running as a non-root user.
#
#   docker build -t extauthz:dev \
#     --build-arg VERSION=$(git describe --tags --always --dirty) --build-arg COMMIT=$(git rev-parse HEAD) .
#
# Checked by deploytest/dockerfile_test.go (cd deploytest && go test ./...).

# Build on the builder's own platform and cross-compile: fast multi-arch builds
# (docker buildx build --platform linux/amd64,linux/arm64 ...) without emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
# What `extauthz version` and extauthz_build_info report. The build context
# has no .git (.dockerignore), so the commit must be passed in.
ARG VERSION=dev
ARG COMMIT=unknown
WORKDIR /src

# Dependencies first, so a source change does not re-download modules.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
# CGO_ENABLED=0: a static binary for a base image with no libc; the SQLite store
# is pure Go (modernc.org/sqlite), so nothing needs cgo. -trimpath keeps the
# build machine's paths out of the binary and its panics.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/extauthz ./cmd/extauthz

# The embedded store's directory, owned by the runtime user: distroless has no
# shell to create it at run time, and the root filesystem may be read-only.
RUN mkdir -p /out/var/lib/extauthz

# distroless/static: no shell, no package manager, CA certificates (for rediss://)
# and tzdata only. The :nonroot variant runs as uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/extauthz /extauthz
COPY --from=build --chown=65532:65532 /out/var/lib/extauthz /var/lib/extauthz
# The default config: embedded store under /var/lib/extauthz, default listeners.
# Mount your own over it (docker-compose.yml, the k8s ConfigMap do).
COPY deploy/docker/extauthz.yaml /etc/extauthz/config.yaml
# healthcheck, keys and config check read the same file as serve.
ENV EXTAUTHZ_CONFIG=/etc/extauthz/config.yaml
USER 65532:65532
VOLUME ["/var/lib/extauthz"]
# 9001 gRPC ext_authz + grpc.health.v1, 9002 HTTP mode, /healthz, /readyz,
# /metrics, 9003 admin API (reachable only where the config sets listen.admin to
# a non-loopback address; keep that on a private network).
EXPOSE 9001 9002 9003
# No curl in distroless: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/extauthz", "healthcheck"]
ENTRYPOINT ["/extauthz"]
CMD ["serve", "--config", "/etc/extauthz/config.yaml"]
