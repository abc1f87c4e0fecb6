package redistest

import "go.uber.org/goleak"

// LeakOptions are the goleak options for tests that stop a Redis server
// under a live client. After pool-size dial failures in a row, go-redis
// redials from a goroutine of its own ((*ConnPool).tryDial) that sleeps a
// second between attempts and only then sees that its pool was closed: it
// ends by itself, but up to a second after the client's Close, which is
// after goleak has stopped retrying. Every other goroutine is still checked.
func LeakOptions() []goleak.Option {
	return []goleak.Option{goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")}
}
