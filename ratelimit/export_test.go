package ratelimit

// LocalShards is how many shards a Local spreads its buckets over.
const LocalShards = localShards

// SteadyClock is the clock a Local reads when given none.
var SteadyClock = steadyClock
