package redis

import goredis "github.com/redis/go-redis/v9"

// The Lua scripts below make every multi-key change atomic. Each touches
// only keys of the layout in store.go, which share the {keys} hash tag, so
// they run unchanged on Redis Cluster. They return a status word rather than
// raising errors, so that "already exists" or "someone changed it meanwhile"
// never looks like an unavailable Redis.
//
// Scores of the live-by-owner sets are expiry times in Unix microseconds
// ("+inf" for no expiry): exact in a Lua/float64 number until the year 2255.

// createScript stores a new key unless its id or hash exists or its owner
// is at the limit.
//
//	KEYS: 1 record, 2 id→hash, 3 all ids, 4 owner's ids, 5 owner's live ids, 6 changes
//	ARGV: 1 record JSON, 2 hash hex, 3 id, 4 max per owner (0 = none),
//	      5 now (µs), 6 live score ("" = not live), 7 changes MAXLEN
var createScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 'EXISTS'
end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('ZCOUNT', KEYS[5], '(' .. ARGV[5], '+inf') >= max then
  return 'LIMIT'
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'h', ARGV[2])
return 'OK'
`)

// updateScript replaces a record if it is still the one the caller read
// (optimistic concurrency: the caller retries on CONFLICT).
//
//	KEYS: 1 record, 2 owner's live ids, 3 changes
//	ARGV: 1 record JSON as read, 2 new record JSON, 3 id, 4 live score ("" = not live),
//	      5 hash hex, 6 changes MAXLEN
var updateScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'CONFLICT'
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'h', ARGV[5])
return 'OK'
`)

// rotateScript marks the old key rotated and stores its successor, if the
// old record is still the one the caller read and the new id and hash are
// free. The rotated key leaves its owner's live set: it no longer counts
// against the limit, even during its grace period.
//
//	KEYS: 1 old record, 2 old owner's live ids, 3 new record, 4 new id→hash,
//	      5 all ids, 6 new owner's ids, 7 new owner's live ids, 8 changes
//	ARGV: 1 old record JSON as read, 2 old record JSON rotated, 3 old id, 4 old hash hex,
//	      5 new record JSON, 6 new id, 7 new hash hex, 8 new live score, 9 changes MAXLEN
var rotateScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'CONFLICT'
end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return 'EXISTS'
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], ARGV[7])
redis.call('ZADD', KEYS[5], 0, ARGV[6])
redis.call('ZADD', KEYS[6], 0, ARGV[6])
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[8], ARGV[6])
end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*', 'h', ARGV[4])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*', 'h', ARGV[7])
return 'OK'
`)

// touchScript writes last-use times into many records at once: each record
// is replaced only if it is still the one the caller read. It emits no
// change: last_used_at does not affect a decision, and announcing it would
// flush every replica's cache entry for every used key once a minute.
//
//	KEYS: the records
//	ARGV: for each key, the record JSON as read, then the new JSON
//	Returns the 1-based indexes of records that changed meanwhile.
var touchScript = goredis.NewScript(`
local conflicts = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[2*i-1] then
    redis.call('SET', k, ARGV[2*i])
  else
    conflicts[#conflicts+1] = i
  end
end
return conflicts
`)

// pollScript reads the change stream after the last entry a watcher saw,
// and first checks that this entry is still there. If it is gone, the log
// has a gap (trimmed past a watcher that fell behind, or lost in a restart
// or failover without persistence) and the watcher must forget everything.
// An empty last id asks only for the current end of the stream.
//
//	KEYS: 1 changes
//	ARGV: 1 last id seen ("" = none yet), 2 max entries
//	Returns {status, id, hash hex…}: status "END" (id = current end),
//	"GAP" (id = current end) or "OK" (id = last entry returned, or the
//	last id seen when there is nothing new).
var pollScript = goredis.NewScript(`
local function tail()
  local e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #e == 0 then return '0-0' end
  return e[1][1]
end
local last = ARGV[1]
if last == '' then
  return {'END', tail()}
end
if last ~= '0-0' and #redis.call('XRANGE', KEYS[1], last, last) == 0 then
  return {'GAP', tail()}
end
local out = {'OK', last}
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])
for _, e in ipairs(entries) do
  out[2] = e[1]
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'h' then out[#out+1] = f[i+1] end
  end
end
return out
`)
