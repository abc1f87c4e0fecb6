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
-- KEYS     the counters of every check, in order: check c's limits take the
--          next nlim_c keys. A counter is a string of little-endian doubles
--          (struct "<d...": exact for the integers here): the sub-window
--          length s (µs) the groups were counted with, then a pair (j,
--          count*256 + mark) per group j, in ascending j. One GET and one
--          SET per limit: a hash of the groups costs Redis several times
--          more to read into Lua (a string per field and per value). The
--          keys of one check share the hash tag {bucket}, hence one Cluster
--          slot (a Cluster client sends each check as its own call).
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

-- FMT[n] is the struct format of a counter of n groups.
local FMT = {}
local function fmt(n)
  local f = FMT[n]
  if not f then
    f = '<d' .. string.rep('dd', n)
    FMT[n] = f
  end
  return f
end

-- decode reads a counter: {s, j1, v1, j2, v2, ...}, or nil for none or a
-- malformed one (counted again from empty, like one of another s).
local function decode(str)
  if not str then return nil end
  local n = (#str / 8 - 1) / 2
  if n < 0 or n ~= floor(n) then return nil end
  local g = {struct.unpack(fmt(n), str)}
  g[#g] = nil -- unpack's last value is the position after the string
  return g
end

-- The count of a limit at now: the groups of g (decode's table) from
-- idx-span to idx that still count. Also the value of group idx, and the
-- newest group's index.
local function count(g, idx, w, s)
  local held, cur, newest = 0, nil, idx
  local oldest = idx - span
  for f = 2, #g, 2 do
    local j = g[f]
    if j > newest then newest = j end
    if j >= oldest then
      local v = g[f + 1]
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
  return held, cur, newest
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
    local g = decode(redis.call('GET', KEYS[k + i]))
    if g and g[1] ~= s then g = nil end -- counted with another s: void
    local idx, held, cur = floordiv(now, s), 0, nil
    if g then
      local newest
      held, cur, newest = count(g, idx, w, s)
      if newest > idx then -- the clock went back: count as of the newest group
        idx = newest
        held, cur = count(g, idx, w, s)
      end
    end
    local b = 8 * (i - 1)
    ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4] = n, w, s, g or false
    ST[b + 5], ST[b + 6], ST[b + 7] = idx, held, cur or false
    if held >= n then allowed = false end
    if n - held < granted then granted = n - held end
    local left = (idx + 1) * s - now
    if lease == nil or left < lease then lease = left end
  end

  out[o + 1], out[o + 2] = allowed and granted or 0, lease or 0
  if not allowed then
    for i = 1, nkeys do
      local b = 8 * (i - 1)
      local n, w, s, g, idx, held = ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6]
      local t = 0
      if held >= n and g then
        -- The counted groups stop counting oldest first, each at bound + W + 1:
        -- visit them in index order (at most span+1 of them) until enough are gone.
        local need, freed, after = held - n + 1, 0, idx - span - 1
        while freed < need do
          local next, nv = nil, nil
          for f = 2, #g, 2 do
            local j = g[f]
            if j > after and j <= idx and (next == nil or j < next) then next, nv = j, g[f + 1] end
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

  -- Pass 2: count the request in every limit: the groups that can still
  -- count, with group idx's new value, written back in one SET whose expiry
  -- is when group idx stops counting (the latest of them all).
  for i = 1, nkeys do
    local b = 8 * (i - 1)
    local w, s, g, idx, held, cur = ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6], ST[b + 7]
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
    local new, n = {s}, 0
    if g then
      for f = 2, #g, 2 do
        local j = g[f]
        if j >= idx - span and j ~= idx then
          new[2 * n + 2], new[2 * n + 3] = j, g[f + 1]
          n = n + 1
        end
      end
    end
    new[2 * n + 2], new[2 * n + 3] = idx, c * 256 + m -- idx is the newest group
    n = n + 1
    -- At least 1ms: SET takes no other (only clocks beyond 2^53 µs, which
    -- doubles cannot hold exactly, come near it).
    local ttl = floordiv((idx + 1) * s + w + 1 - now + 999, 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[k + i], struct.pack(fmt(n), unpack(new)), 'PX', ttl)
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
