# The README's two commands are `make run` and `make test`.
GO ?= go
CONFIG ?= extauthz.yaml

FUZZTIME ?= 10s

.PHONY: run build test test-short bench fuzz lint

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

fuzz: ## each fuzz target for FUZZTIME (the checked-in seeds under testdata/fuzz run in every plain test run too)
	$(GO) test -run '^$$' -fuzz '^FuzzNormalizePath$$' -fuzztime $(FUZZTIME) ./authz/
	$(GO) test -run '^$$' -fuzz '^FuzzCheck$$' -fuzztime $(FUZZTIME) ./authz/
	$(GO) test -run '^$$' -fuzz '^FuzzFormatCheck$$' -fuzztime $(FUZZTIME) ./keystore/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config/

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
GOVULNCHECK ?= golang.org/x/vuln/cmd/govulncheck@v1.9.0

lint: ## gofmt, go vet, staticcheck, govulncheck (its database may be unreachable: then it says so and passes)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@out=$$($(GO) run $(GOVULNCHECK) ./... 2>&1); rc=$$?; echo "$$out"; \
	  if [ $$rc -ne 0 ] && echo "$$out" | grep -q "fetching vulnerabilities"; then \
	    echo "govulncheck: the vulnerability database is unreachable from here; not checked"; \
	  else exit $$rc; fi
