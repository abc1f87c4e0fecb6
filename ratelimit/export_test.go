package ratelimit

// LocalShards is how many shards a Local spreads its buckets over.
const LocalShards = localShards
