package redis

import goredis "github.com/redis/go-redis/v9"

// The Lua scripts below make every multi-key change atomic. Each touches
// only keys of the layout in store.go, which share the {keys} hash tag, so
// they run unchanged on Redis Cluster. They return a status word rather than
// raising errors, so that "already exists" or "someone changed it meanwhile"
// never looks like an unavailable Redis.
//
// Scores of the live-by-owner sets are expiry times in Unix microseconds,
// rounded up (untilMicros; "+inf" for no expiry), and the instants they are
// compared with are rounded down (micros): exact in a Lua/float64 number
// until the year 2255.

// indexLua maintains a key's entries in the live listing index and the
// expiry and end indexes (see the layout in store.go) from what the caller
// worked out of the record it writes. Each write script below starts with it.
//
//	index(open, owner's open, expiring, ends, id, member, listed ("1" or ""),
//	      expiry score ("" = none), end score ("" = none))
const indexLua = `
local function index(open, ownerOpen, expiring, ends, id, member, listed, expScore, endScore)
  if listed == '1' then
    redis.call('ZADD', open, 0, id)
    redis.call('ZADD', ownerOpen, 0, id)
  else
    redis.call('ZREM', open, id)
    redis.call('ZREM', ownerOpen, id)
  end
  if expScore == '' then
    redis.call('ZREM', expiring, member)
  else
    redis.call('ZADD', expiring, expScore, member)
  end
  if endScore == '' then
    redis.call('ZREM', ends, member)
  else
    redis.call('ZADD', ends, endScore, member)
  end
end
`

// countLua counts an owner's keys against its limit at now (µs): those in
// its live set (neither revoked nor rotated away) that have not expired,
// and the keys in their grace period (its grace set, "<id> <successor id>"
// scored by when the grace ends) whose successor is no longer live: in
// neither set with a score after now (revoked, expired, or purged). A
// line of rotations counts once while a key of it is live; a successor
// stands for a key in its grace period only while it is live itself. A key
// being brought back (revived, "" for none) stands for its predecessor
// already: the line counts once with it, as the key itself.
//
//	counted(owner's live ids, owner's grace, owner's grace ids, now, revived)
const countLua = `
local function liveIn(set, id, now)
  local score = redis.call('ZSCORE', set, id)
  return score and (score == 'inf' or tonumber(score) > now)
end
local function counted(live, grace, graceIDs, now, revived)
  local n = redis.call('ZCOUNT', live, '(' .. now, '+inf')
  local t = tonumber(now)
  for _, m in ipairs(redis.call('ZRANGE', grace, '(' .. now, '+inf', 'BYSCORE')) do
    local succ = string.match(m, ' (%S+)$')
    if succ ~= revived and not (liveIn(live, succ, t) or liveIn(graceIDs, succ, t)) then
      n = n + 1
    end
  end
  return n
end
`

// writerLua starts the twin of each write script that a change made by a
// key (keystore.WithWriter) runs: the last key and the last argument, taken
// off before the script proper reads its own, are the writer's record and
// the record as the writer's authority was checked against. If the stored
// record is no longer that one, the script writes nothing and answers
// WRITER: the store reads the writer again and tells a last-use write
// behind (try again) from a change of its authority (refused).
const writerLua = `
local writer, writerRecord = table.remove(KEYS), table.remove(ARGV)
if redis.call('GET', writer) ~= writerRecord then
  return 'WRITER'
end
`

// createLua, the script of a create, stores a new key unless its id or hash
// exists or its owner is at the limit. On a store with no keys yet it also
// marks the indexes complete: there is nothing older to index.
//
//	KEYS: 1 record, 2 id→hash, 3 all ids, 4 owner's ids, 5 owner's live ids, 6 changes,
//	      7 open ids, 8 owner's open ids, 9 expiring, 10 ends, 11 index version,
//	      12 owner's grace, 13 owner's grace ids,
//	      14 the idempotency key's record (only for a create that has one)
//	ARGV: 1 record JSON, 2 hash hex, 3 id, 4 max per owner (0 = none),
//	      5 now (µs), 6 live score ("" = not live), 7 changes MAXLEN,
//	      8 listed, 9 expiry score, 10 end score, 11 member, 12 index version,
//	      13 the idempotency record ("<request hex> <id>"), 14 its lifetime (ms)
//
// A create whose idempotency key has a record already stores nothing and
// answers "ONCE <record>".
const createLua = indexLua + countLua + `
if KEYS[14] then
  local was = redis.call('GET', KEYS[14])
  if was then
    return 'ONCE ' .. was
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 'EXISTS'
end
local max = tonumber(ARGV[4])
if max > 0 and counted(KEYS[5], KEYS[12], KEYS[13], ARGV[5], '') >= max then
  return 'LIMIT'
end
if redis.call('ZCARD', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[11]) == 0 then
  redis.call('SET', KEYS[11], ARGV[12])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
end
index(KEYS[7], KEYS[8], KEYS[9], KEYS[10], ARGV[3], ARGV[11], ARGV[8], ARGV[9], ARGV[10])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'h', ARGV[2])
if KEYS[14] then
  redis.call('SET', KEYS[14], ARGV[13], 'PX', ARGV[14])
end
return 'OK'
`

// createScript runs it; createByWriter runs it for a key's change (writerLua).
var createScript, createByWriter = goredis.NewScript(createLua), goredis.NewScript(writerLua + createLua)

// updateLua, the script of an update, replaces a record if it is still the
// one the caller read (optimistic concurrency: the caller retries on
// CONFLICT). When the caller says the change makes the key count against its
// owner's limit, the owner's count is checked first (LIMIT): the key itself
// is not in it, as it did not count before.
//
//	KEYS: 1 record, 2 owner's live ids, 3 changes, 4 open ids, 5 owner's open ids,
//	      6 expiring, 7 ends, 8 owner's grace, 9 owner's grace ids (8 and 9 only when
//	      ARGV[11] > 0 or ARGV[13] ~= '': the script reads them then alone)
//	ARGV: 1 record JSON as read, 2 new record JSON, 3 id, 4 live score ("" = not live),
//	      5 hash hex, 6 changes MAXLEN, 7 listed, 8 expiry score, 9 end score,
//	      10 member, 11 max per owner to check (0 = no check), 12 count instant (µs),
//	      13 grace member ("" = the key was not rotated away), 14 grace score
//	      ("" = not in its grace period: revoked)
const updateLua = indexLua + countLua + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'CONFLICT'
end
local max = tonumber(ARGV[11])
if max > 0 and counted(KEYS[2], KEYS[8], KEYS[9], ARGV[12], ARGV[3]) >= max then
  return 'LIMIT'
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
if ARGV[13] ~= '' then
  if ARGV[14] == '' then
    redis.call('ZREM', KEYS[8], ARGV[13])
    redis.call('ZREM', KEYS[9], ARGV[3])
  else
    redis.call('ZADD', KEYS[8], ARGV[14], ARGV[13])
    redis.call('ZADD', KEYS[9], ARGV[14], ARGV[3])
  end
end
index(KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[3], ARGV[10], ARGV[7], ARGV[8], ARGV[9])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'h', ARGV[5])
return 'OK'
`

// updateScript runs it; updateByWriter runs it for a key's change (writerLua).
var updateScript, updateByWriter = goredis.NewScript(updateLua), goredis.NewScript(writerLua + updateLua)

// rotateLua, the script of a rotation, marks the old key rotated and stores
// its successor, if the old record is still the one the caller read and the
// new id and hash are free. The rotated key leaves its owner's live set for
// its grace set: it counts against the limit only once its successor is no
// longer live (countLua). It stays listed until it expires at the end of the
// grace period.
//
//	KEYS: 1 old record, 2 old owner's live ids, 3 new record, 4 new id→hash,
//	      5 all ids, 6 new owner's ids, 7 new owner's live ids, 8 changes,
//	      9 open ids, 10 owner's open ids, 11 expiring, 12 ends,
//	      13 owner's grace, 14 owner's grace ids
//	ARGV: 1 old record JSON as read, 2 old record JSON rotated, 3 old id, 4 old hash hex,
//	      5 new record JSON, 6 new id, 7 new hash hex, 8 new live score, 9 changes MAXLEN,
//	      10 old expiry score, 11 old end score, 12 old member,
//	      13 new listed, 14 new expiry score, 15 new end score, 16 new member,
//	      17 old grace member
const rotateLua = indexLua + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'CONFLICT'
end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return 'EXISTS'
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[13], ARGV[11], ARGV[17])
redis.call('ZADD', KEYS[14], ARGV[11], ARGV[3])
index(KEYS[9], KEYS[10], KEYS[11], KEYS[12], ARGV[3], ARGV[12], '1', ARGV[10], ARGV[11])
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[4], ARGV[7])
redis.call('ZADD', KEYS[5], 0, ARGV[6])
redis.call('ZADD', KEYS[6], 0, ARGV[6])
if ARGV[8] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[8], ARGV[6])
end
index(KEYS[9], KEYS[10], KEYS[11], KEYS[12], ARGV[6], ARGV[16], ARGV[13], ARGV[14], ARGV[15])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*', 'h', ARGV[4])
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*', 'h', ARGV[7])
return 'OK'
`

// rotateScript runs it; rotateByWriter runs it for a key's change (writerLua).
var rotateScript, rotateByWriter = goredis.NewScript(rotateLua), goredis.NewScript(writerLua + rotateLua)

// unlistScript takes expired keys out of the live listing: each member of
// the expiring set whose score is still below the cutoff (a concurrent
// update may have moved it) leaves it and both open sets.
//
//	KEYS: 1 expiring, 2 open ids, then each member's owner's open ids
//	ARGV: 1 cutoff (µs; scores below it have expired), then the members
//	Returns how many it unlisted.
var unlistScript = goredis.NewScript(`
local cutoff = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local m = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], m)
  if score and tonumber(score) < cutoff then
    local id = string.match(m, '^(%S+)')
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[i+1], id)
    n = n + 1
  end
end
return n
`)

// purgeScript deletes keys that have been dead since before the cutoff:
// each member of the ends set whose score is still below the cutoff (an
// update may have revived the key meanwhile) loses its record, its id and
// its entry in every set. It announces no change: a purged key was dead.
//
//	KEYS: 1 ends, 2 all ids, 3 open ids, 4 expiring, then for each member:
//	      id→hash, record, owner's ids, owner's live ids, owner's open ids,
//	      owner's grace, owner's grace ids
//	ARGV: 1 cutoff (µs), then for each member: member, id, hash hex as read
//	Returns how many it purged.
var purgeScript = goredis.NewScript(`
local cutoff = tonumber(ARGV[1])
local n = 0
local members = (#ARGV - 1) / 3
for i = 0, members - 1 do
  local m, id, hash = ARGV[2+3*i], ARGV[3+3*i], ARGV[4+3*i]
  local k = 5 + 7*i
  -- grace periods that ended before the cutoff count for nothing
  redis.call('ZREMRANGEBYSCORE', KEYS[k+5], '-inf', '(' .. ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[k+6], '-inf', '(' .. ARGV[1])
  local score = redis.call('ZSCORE', KEYS[1], m)
  local cur = redis.call('GET', KEYS[k])
  if score and cur and cur ~= hash then
    -- not the record the caller read (cannot happen: ids never move);
    -- drop the stale entry and leave the record alone
    redis.call('ZREM', KEYS[1], m)
  elseif score and tonumber(score) < cutoff then
    if cur then
      redis.call('DEL', KEYS[k+1])
      redis.call('DEL', KEYS[k])
    end
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[k+2], id)
    redis.call('ZREM', KEYS[k+3], id)
    redis.call('ZREM', KEYS[k+4], id)
    redis.call('ZREM', KEYS[4], m)
    redis.call('ZREM', KEYS[1], m)
    n = n + 1
  end
end
return n
`)

// buildIndexScript indexes a batch of keys written before the listing
// indexes existed, and records how far the build has come, if no other
// process moved it meanwhile (CONFLICT: that one did this batch). A record
// that changed since the caller read it was indexed by the write that
// changed it, and is skipped.
//
//	KEYS: 1 index version, 2 open ids, 3 expiring, 4 ends, then for each key:
//	      record, owner's open ids
//	ARGV: 1 build state as read ("" = none), 2 new state, then for each key:
//	      record JSON as read, id, member, listed, expiry score, end score
var buildIndexScript = goredis.NewScript(indexLua + `
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 'CONFLICT'
end
local keys = (#ARGV - 2) / 6
for i = 0, keys - 1 do
  local a = 3 + 6*i
  local k = 5 + 2*i
  if redis.call('GET', KEYS[k]) == ARGV[a] then
    index(KEYS[2], KEYS[k+1], KEYS[3], KEYS[4], ARGV[a+1], ARGV[a+2], ARGV[a+3], ARGV[a+4], ARGV[a+5])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return 'OK'
`)

// buildGraceScript puts a batch of keys rotated away before the grace sets
// existed into their owner's grace sets, and records how far the build has
// come, if no other process moved it meanwhile (CONFLICT: that one did this
// batch). A record that changed since the caller read it was written by a
// change that set its grace entries itself, and is skipped.
//
//	KEYS: 1 grace build state, then for each key: record, owner's grace, owner's grace ids
//	ARGV: 1 build state as read ("" = none), 2 new state, then for each key:
//	      record JSON as read, grace member, grace score, id
var buildGraceScript = goredis.NewScript(`
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 'CONFLICT'
end
local keys = (#ARGV - 2) / 4
for i = 0, keys - 1 do
  local a = 3 + 4*i
  local k = 2 + 3*i
  if redis.call('GET', KEYS[k]) == ARGV[a] then
    redis.call('ZADD', KEYS[k+1], ARGV[a+2], ARGV[a+1])
    redis.call('ZADD', KEYS[k+2], ARGV[a+2], ARGV[a+3])
  end
end
redis.call('SET', KEYS[1], ARGV[2])
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
//	last id seen when there is nothing new). An entry without an "h"
//	field gives "": a change the watcher cannot name.
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
  local f, named = e[2], false
  for i = 1, #f, 2 do
    if f[i] == 'h' then out[#out+1], named = f[i+1], true end
  end
  if not named then out[#out+1] = '' end
end
return out
`)
