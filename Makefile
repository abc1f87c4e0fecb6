# The README's two commands are `make run` and `make test`.
GO ?= go
CONFIG ?= extauthz.yaml

.PHONY: run build test test-short bench lint

run: ## run the service on the embedded store with the demo config
	$(GO) run ./cmd/extauthz serve --config $(CONFIG)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/extauthz ./cmd/extauthz

test: ## everything CI runs: vet, the race-checked suite, the deployment checks
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	cd deploytest && $(GO) test -count=1 ./...

test-short: ## the suite without the race detector
	$(GO) test -count=1 ./...

bench: ## Go benchmarks of the hot path
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./authz/ ./keystore/ ./ratelimit/ ./audit/
