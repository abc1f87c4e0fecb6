# The README's two commands are `make run` and `make test`.
GO ?= go
CONFIG ?= extauthz.yaml

FUZZTIME ?= 10s

# What `extauthz version` and extauthz_build_info report: the tag or commit
# the tree is at (with -dirty for uncommitted changes), and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: run build test test-short bench bench-go load load-scale measure-placement fuzz lint

run: ## run the service on the embedded store with the demo config
	$(GO) run ./cmd/extauthz serve --config $(CONFIG)

build: ## bin/extauthz, static, stamped with VERSION and COMMIT
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/extauthz ./cmd/extauthz

# The packages whose tests take minutes, longest first: go test runs
# packages in the order named (two at a time on two cores), so naming these
# before ./... keeps the run from ending on one of them started last, as
# alphabetical order did (ratelimit/redis began when cmd/extauthz was
# nearly done). More at once is not faster here: tests that prove a bound in
# time then fail for the machine's sake.
SLOW_TESTS = ./cmd/extauthz ./keystore/redis ./admin ./ratelimit/redis ./keystore/sqlite

test: ## everything CI runs: vet, the race-checked suite, the deployment checks
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m $(SLOW_TESTS) ./...
	cd deploytest && $(GO) test -count=1 ./...

test-short: ## the suite without the race detector
	$(GO) test -count=1 ./...

bench: ## the Go benchmarks of the hot path, then the load comparison of the whole server (one after the other: they would skew each other)
	$(MAKE) bench-go
	$(MAKE) load

bench-go: ## Go benchmarks of the hot path
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./authz/ ./authz/envoy/ ./keystore/ ./ratelimit/ ./ratelimit/redis/ ./audit/

# LOADFLAGS go to `extauthz-load bench` (see `go run ./cmd/extauthz-load bench -h`),
# e.g. LOADFLAGS='--rounds 5 --duration 3s' or LOADFLAGS='--profile bench/profiles' (cmd/extauthz-load/README.md).
LOADFLAGS ?=
# The load targets measure a build that keeps its symbol table (no -s -w), so
# that --profile can name its functions. Stripping changes neither the code
# nor what the process keeps in memory: the symbol table is not loaded.
SYMLDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

load: ## the load comparison (no-op server, embedded store, Redis, Redis rate limiting, 1000 keys without leases, the envoyproxy/ratelimit peer when installed): one table; needs redis-server, ~3 min
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(SYMLDFLAGS)" -o bin/extauthz-sym ./cmd/extauthz
	$(GO) build -o bin/extauthz-load ./cmd/extauthz-load
	bin/extauthz-load bench --extauthz bin/extauthz-sym $(LOADFLAGS)

load-scale: ## 1M keys in Redis, cache 100k, Zipf traffic: hit ratio, p99, RSS; several minutes and ~2 GB of memory
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(SYMLDFLAGS)" -o bin/extauthz-sym ./cmd/extauthz
	$(GO) build -o bin/extauthz-load ./cmd/extauthz-load
	bin/extauthz-load bench --extauthz bin/extauthz-sym --scenarios noop,scale --rounds 1 --duration 10s $(LOADFLAGS)

PLACEMENT_KEYS ?= 1000000

measure-placement: ## key records on a 3-master Redis Cluster with PLACEMENT_KEYS keys: memory and CPU per master, cache-miss cost, change-feed cost; ~2 min and ~2 GB for 1M
	EXTAUTHZ_PLACEMENT_KEYS=$(PLACEMENT_KEYS) $(GO) test -run '^$$' -bench '^BenchmarkKeyPlacement$$' -benchtime 5s -timeout 60m -v ./keystore/redis/ | grep -E '^(Benchmark|ok|FAIL)|placement:'

fuzz: ## each fuzz target for FUZZTIME (the checked-in seeds under testdata/fuzz run in every plain test run too)
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME) \
	  authz:FuzzNormalizePath \
	  authz:FuzzRouteAgainstUpstreams \
	  authz:FuzzCredentialsAgainstGo \
	  authz/envoy:FuzzCheck \
	  authz/envoy:FuzzDecodeCheck \
	  authz/envoy:FuzzDecodeCheckMessages \
	  authz/envoy:FuzzDecodeCheckParts \
	  authz/envoy:FuzzWireAndProtoDecideAlike \
	  keystore:FuzzFormatCheck \
	  keystore:FuzzHoldsKey \
	  keystore:FuzzDecodeRecord \
	  keystore/redis:FuzzReplyScanner \
	  config:FuzzParse \
	  admin:FuzzCreateAndPatchBodies \
	  audit:FuzzAppendString

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
