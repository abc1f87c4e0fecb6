-- allow.lua: atomic checks of the limits of buckets, a batch of checks per
-- call. The algorithm and its proof are in ratelimit/window.go; this is the
-- same integer arithmetic (Lua numbers are doubles: every value here stays
-- far below 2^53). It is written for speed: Redis runs it for every batch,
-- and Lua steps, tables and redis.call are what it costs. Running a batch in
-- one call pays the fixed cost of a script call (and of reading the clock)
-- once for all of its checks; the checks run one after the other, exactly as
-- separate calls would, so two checks of one bucket in a batch see each
-- other's counts.
--
-- KEYS     the counters of every check, in order: check c's limits take the
--          next nlim_c keys. A counter is a string of little-endian doubles
--          (struct "<d": exact for the integers here): the sub-window length
--          s (µs) the groups were counted with, the total count T of the
--          groups it holds, then a pair (j, count*256 + mark) per group j, in
--          ascending j. So a check reads the newest group and the total
--          directly and works out only the oldest groups, the ones that may
--          have stopped counting: its cost does not grow with the number of
--          groups, and the write is one SET of the string with its oldest
--          groups cut and its newest one changed or added. The keys of one
--          check share the hash tag {bucket}, hence one Cluster slot (a
--          Cluster client sends each check as its own call).
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
local sunpack, spack, sub = struct.unpack, struct.pack, string.sub
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

-- pair returns group p's (0-based) index and value.
local function pair(str, p)
  return sunpack('<dd', str, 17 + 16 * p)
end

-- ST holds 11 values per limit of the check at hand (one table for all:
-- tables and redis.call are what a script pays for).
local ST = {}

-- check runs one check: its limits are KEYS[k+1..k+nkeys] with their N, W, s
-- at ARGV[a+1..a+3*nkeys]. It appends the check's values to out at o+1.
local function check(k, nkeys, a, want, out, o)
  -- Pass 1: the count of every limit.
  local allowed = true
  local granted, lease = want, nil
  for i = 1, nkeys do
    local n, w, s = tonumber(ARGV[a + 3 * i - 2]), tonumber(ARGV[a + 3 * i - 1]), tonumber(ARGV[a + 3 * i])
    local str = redis.call('GET', KEYS[k + i])
    local np, total = 0, 0
    if str then
      np = (#str - 16) / 16
      local cs
      cs, total = sunpack('<dd', str)
      -- Counted with another s (void), or not a counter: start afresh.
      if np < 1 or np ~= floor(np) or cs ~= s then str, np, total = false, 0, 0 end
    end
    local idx, held, cur, drop, dropped = floordiv(now, s), 0, false, 0, 0
    if str then
      local lj, lv = pair(str, np - 1)
      if lj > idx then idx = lj end -- the clock went back: count as of the newest group
      if lj == idx then cur = lv end
      -- The groups that no longer count are the oldest: those before
      -- idx-span (stale: cut at the next write) and those whose bound is
      -- more than W ago (kept, as the local limiter keeps them until they
      -- are stale). Every later group counts: its bound is at least j*s.
      local oldest = idx - span
      held = total
      for p = 0, np - 1 do
        local j, v = pair(str, p)
        if j < oldest then
          local c = floor(v / 256)
          held, drop, dropped = held - c, p + 1, dropped + c
        elseif j * s + w >= now then
          break
        else
          local l, c = latest(j, v, s)
          if l + w < now then held = held - c end -- counted while bound + W ≥ now
        end
      end
    end
    local b = 11 * (i - 1)
    ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6] = n, w, s, str, idx, held
    ST[b + 7], ST[b + 8], ST[b + 9], ST[b + 10], ST[b + 11] = cur, np, total, drop, dropped
    if held >= n then allowed = false end
    if n - held < granted then granted = n - held end
    local left = (idx + 1) * s - now
    if lease == nil or left < lease then lease = left end
  end

  out[o + 1], out[o + 2] = allowed and granted or 0, lease or 0
  if not allowed then
    for i = 1, nkeys do
      local b = 11 * (i - 1)
      local n, w, s, str, idx, held, np = ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6], ST[b + 8]
      local t = 0
      if held >= n and str then
        -- The counted groups stop counting oldest first, each at bound + W + 1:
        -- visit them in index order (at most span+1 of them) until enough are gone.
        local need, freed, oldest = held - n + 1, 0, idx - span
        for p = 0, np - 1 do
          if freed >= need then break end
          local j, v = pair(str, p)
          if j >= oldest then
            local l, c = latest(j, v, s)
            if l + w + 1 > now then
              freed = freed + c
              t = l + w + 1 - now
            end
          end
        end
      end
      out[o + 2 * i + 1], out[o + 2 * i + 2] = held, t
    end
    return
  end

  -- Pass 2: count the request in every limit: one SET of the counter with
  -- the stale groups cut and group idx (the newest) changed or added, whose
  -- expiry is when group idx stops counting, the latest of them all.
  for i = 1, nkeys do
    local b = 11 * (i - 1)
    local w, s, str, idx, held = ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6]
    local cur, np, total, drop, dropped = ST[b + 7], ST[b + 8], ST[b + 9], ST[b + 10], ST[b + 11]
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
    local kept = ''
    if str then
      local last = np -- the groups kept: drop..last-1 (0-based), group idx replaced
      if cur then last = np - 1 end
      if last > drop then kept = sub(str, 17 + 16 * drop, 16 + 16 * last) end
    end
    -- At least 1ms: SET takes no other (only clocks beyond 2^53 µs, which
    -- doubles cannot hold exactly, come near it).
    local ttl = floordiv((idx + 1) * s + w + 1 - now + 999, 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[k + i], spack('<dd', s, total - dropped + granted) .. kept .. spack('<dd', idx, c * 256 + m), 'PX', ttl)
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
