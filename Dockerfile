# syntax=docker/dockerfile:1
# Container images of the callrouter components, one target each:
#
#   docker build --target worker -t ghcr.io/callrouter/worker:v0.1.0 .
#
# (also ingest, router). Static Go binaries (no cgo) on distroless static: no shell, no package
# manager, no libc; the numeric non-root user 65532. The same sources, Go release and base images
# give the same binaries: -trimpath, no VCS stamp, no build id. Pin the base images by digest in
# your registry for byte-identical images.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOTOOLCHAIN=local \
    go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o /out/ \
    ./cmd/ingest ./cmd/router ./cmd/worker

FROM gcr.io/distroless/static-debian12:nonroot AS ingest
COPY --from=build /out/ingest /ingest
USER 65532:65532
# http (/healthz /readyz /metrics, WHIP), SIP, WHIP media; RTP is -sip-rtp-port-min..max (UDP)
EXPOSE 8080/tcp 5060/udp 5060/tcp 8443/udp
ENTRYPOINT ["/ingest"]

FROM gcr.io/distroless/static-debian12:nonroot AS router
COPY --from=build /out/router /router
USER 65532:65532
EXPOSE 8081/tcp
ENTRYPOINT ["/router"]

FROM gcr.io/distroless/static-debian12:nonroot AS worker
COPY --from=build /out/worker /worker
USER 65532:65532
EXPOSE 8082/tcp
ENTRYPOINT ["/worker"]
