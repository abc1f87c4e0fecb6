-- allow.lua: atomic checks of the limits of buckets, a batch of checks per
-- call. The algorithm and its proof are in ratelimit/window.go; this is the
-- same integer arithmetic (Lua numbers are doubles: every value here stays
-- far below 2^53). It is written for speed: Redis runs it for every batch,
-- and redis.call and table allocations are what it costs. Running a batch in
-- one call pays the fixed cost of a script call (and of reading the clock)
-- once for all of its checks; the checks run one after the other, exactly as
-- separate calls would, so two checks of one bucket in a batch see each
-- other's counts.
--
-- KEYS     the counter hashes of every check, in order: check c's limits
--          take the next nlim_c keys. Limit i's hash: field "s" = the
--          sub-window length (µs) the groups were counted with; field "<j>" =
--          count*256 + mark of group j. The keys of one check share the hash
--          tag {bucket}, hence one Cluster slot (a Cluster client sends each
--          check as its own call).
-- ARGV[1]  now in µs, or "" for the server's clock (TIME): one clock for
--          every replica, so counts do not drift with the replicas' clocks.
-- ARGV[2]  span: only the groups idx-span..idx can count (k+1 for k
--          sub-windows per window; see "Memory" in ratelimit/window.go)
-- Then per check: want, nlim, and nlim triples N, W (µs), s (µs).
--          want is how many requests to count at once, ≥ 1. Above 1 the
--          others are a lease (see "Leases" in lease.go): the group's mark
--          becomes the end of its sub-window, where the lease expires.
--
-- Returns, per check in order, {granted, lease, held_1, t_1, held_2, t_2, ...}
-- (2 + 2*nlim values), all in one flat array. granted is how many requests
-- were counted: 0 (denied) or 1..want, as many as every limit had room for.
-- lease is the µs from now until the first of the limits' current
-- sub-windows ends. Allowed: held is the count after this request, t the µs
-- until the limit is fully reset. Denied: nothing is written; held is the
-- count now and t the µs until the limit would allow this request (0 when it
-- is not exhausted).

local floor = math.floor
local MARKS = 255

-- a/b rounded down, exactly, for integers a and b > 0 (float division alone
-- can land one off).
local function floordiv(a, b)
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then return q - 1 elseif r >= b then return q + 1 end
  return q
end

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local span = tonumber(ARGV[2])

-- The upper bound of the time of group j's latest request (see ratelimit/window.go),
-- and the group's count.
local function latest(j, v, s)
  local c = floor(v / 256)
  return j * s + floordiv((v - c * 256) * s + MARKS - 1, MARKS), c
end

-- The count of a limit at now: the groups of raw (an HGETALL reply) from
-- idx-span to idx that still count. Also the value of group idx, whether
-- older (stale) groups are present, and the newest group's index.
local function count(raw, idx, w, s)
  local held, cur, stale, newest = 0, nil, false, idx
  local oldest = idx - span
  for f = 1, #raw, 2 do
    local j = tonumber(raw[f])
    if j then
      if j > newest then newest = j end
      if j < oldest then
        stale = true
      else
        local v = tonumber(raw[f + 1])
        if j == idx then cur = v end
        if j * s + w >= now then
          -- its bound is at least j*s: counted (the common case, without
          -- working the mark out)
          held = held + floor(v / 256)
        else
          local l, c = latest(j, v, s)
          if l + w >= now then held = held + c end -- counted while bound + W ≥ now
        end
      end
    end
  end
  return held, cur, stale, newest
end

-- ST holds 8 values per limit of the check at hand (one table for all:
-- tables, tonumber and redis.call are what a script pays for).
local ST = {}

-- check runs one check: its limits are KEYS[k+1..k+nkeys] with their N, W, s
-- at ARGV[a+1..a+3*nkeys]. It appends the check's values to out at o+1.
local function check(k, nkeys, a, want, out, o)
  -- Pass 1: the count of every limit.
  local allowed = true
  local granted, lease = want, nil
  for i = 1, nkeys do
    local n, w, s = tonumber(ARGV[a + 3 * i - 2]), tonumber(ARGV[a + 3 * i - 1]), tonumber(ARGV[a + 3 * i])
    local raw = redis.call('HGETALL', KEYS[k + i])
    local same = false
    for f = 1, #raw, 2 do -- "s" is written first, so this is usually one step
      if raw[f] == 's' then
        same = tonumber(raw[f + 1]) == s
        break
      end
    end
    local idx, held, cur, stale = floordiv(now, s), 0, nil, false
    if same then
      local newest
      held, cur, stale, newest = count(raw, idx, w, s)
      if newest > idx then -- the clock went back: count as of the newest group
        idx = newest
        held, cur, stale = count(raw, idx, w, s)
      end
    elseif #raw > 0 then
      redis.call('DEL', KEYS[k + i]) -- counted with another s: void
    end
    local b = 8 * (i - 1)
    ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4] = n, w, s, same and raw
    ST[b + 5], ST[b + 6], ST[b + 7], ST[b + 8] = idx, held, cur or false, stale
    if held >= n then allowed = false end
    if n - held < granted then granted = n - held end
    local left = (idx + 1) * s - now
    if lease == nil or left < lease then lease = left end
  end

  out[o + 1], out[o + 2] = allowed and granted or 0, lease or 0
  if not allowed then
    for i = 1, nkeys do
      local b = 8 * (i - 1)
      local n, w, s, raw, idx, held = ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6]
      local t = 0
      if held >= n and raw then
        -- The counted groups stop counting oldest first, each at bound + W + 1:
        -- visit them in index order (at most span+1 of them) until enough are gone.
        local need, freed, after = held - n + 1, 0, idx - span - 1
        while freed < need do
          local next, nv = nil, nil
          for f = 1, #raw, 2 do
            local j = tonumber(raw[f])
            if j and j > after and j <= idx and (next == nil or j < next) then next, nv = j, tonumber(raw[f + 1]) end
          end
          if next == nil then break end
          local l, c = latest(next, nv, s)
          if l + w + 1 > now then
            freed = freed + c
            t = l + w + 1 - now
          end
          after = next
        end
      end
      out[o + 2 * i + 1], out[o + 2 * i + 2] = held, t
    end
    return
  end

  -- Pass 2: count the request in every limit. Numbers go to redis.call as
  -- integers well below 1e17, which Redis writes as plain digits (%.17g): the
  -- field names read back with tonumber.
  for i = 1, nkeys do
    local b = 8 * (i - 1)
    local w, s, raw, idx, held, cur, stale = ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6], ST[b + 7], ST[b + 8]
    local key = KEYS[k + i]
    local c, m = granted, 0
    if cur then
      c = floor(cur / 256)
      m = cur - c * 256
      c = c + granted
    end
    local off = now - idx * s
    local mn = 1 -- the mark of now: its offset in 1/255ths of s, rounded up
    if off > 0 then mn = math.min(floordiv(off * MARKS, s) + 1, MARKS) end
    if granted > 1 then mn = MARKS end -- leased: used until the sub-window ends
    if mn > m then m = mn end
    redis.call('HSET', key, 's', s, idx, c * 256 + m)
    if not cur then
      -- A new group: the key must live while it can count. Its bound is at
      -- most (idx+1)*s, so this expiry also holds for every later request of
      -- the group, which need not touch it (one call less per check).
      redis.call('PEXPIRE', key, floordiv((idx + 1) * s + w + 1 - now + 999, 1000))
    end
    if stale then
      local old = {}
      for f = 1, #raw, 2 do
        local j = tonumber(raw[f])
        if j and j < idx - span then old[#old + 1] = j end
      end
      redis.call('HDEL', key, unpack(old))
    end
    out[o + 2 * i + 1], out[o + 2 * i + 2] = held + granted, latest(idx, c * 256 + m, s) + w + 1 - now
  end
end

local out, o, k, a = {}, 0, 0, 2
while a < #ARGV do
  local want, nkeys = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  check(k, nkeys, a + 2, want, out, o)
  o, k, a = o + 2 + 2 * nkeys, k + nkeys, a + 2 + 3 * nkeys
end
return out
