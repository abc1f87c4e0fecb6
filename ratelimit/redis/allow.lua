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
-- ARGV[3..] one per check: want, nlim, and nlim triples N, W (µs), s (µs),
--          as little-endian doubles: exact for the integers here, and
--          struct.unpack reads them for a fraction of what converting
--          decimals costs. want is how many requests to count at once,
--          ≥ 1. Above 1 the others are a lease (see "Leases" in lease.go),
--          of one of two kinds. While every limit of the check, with the
--          lease, counts at most N/QUIET, the lease lasts until the end of
--          the sub-window span-2 after the current one (about W) and is
--          counted in that future group, marked 0: "a lease, its bound the
--          end of its sub-window". Otherwise it lasts until the end of the
--          current sub-window, is counted in the current group, whose mark
--          becomes 0 for good (a lease's: the end of the sub-window), and
--          is at most N/BUSY of every limit.
--
-- A group's mark 0 means the same bound as 255 (the end of its sub-window);
-- only leases write it: a long one into a group after the current one, a
-- short one into the current group. A check skips such lease groups to
-- find the current group; a later group with any other mark means the
-- clock went back, and the check counts as of that group (its bound is
-- later than the request: counting longer is safe). A carried count (see
-- count) needs to tell a lease's group from a request's: a request's bound
-- is within s/255 of it, a lease's up to a whole sub-window after now.
--
-- Returns, per check in order, {granted, lease, held_1, t_1, held_2, t_2, ...}
-- (2 + 2*nlim values), all in one flat array. granted is how many requests
-- were counted: 0 (denied) or 1..want, as many as every limit had room for.
-- lease is the µs from now until the lease counted (or one that could have
-- been counted) would end: the first of the limits' groups ends. Allowed:
-- held is the count after this request, t the µs until the limit is fully
-- reset. Denied: nothing is written; held is the count now and t the µs
-- until the limit would allow this request (0 when it is not exhausted).

local sunpack, spack, sub, format = struct.unpack, struct.pack, string.sub, string.format
-- Three constants are written as numbers where they are used, not named: a
-- local that a function uses is captured by it every time the script runs
-- (a few hundred instructions a capture in Redis's Lua), and the script runs
-- for every batch. They are MARKS = 255 (a group's mark is its latest
-- request's offset within its sub-window, in 255ths, rounded up) and the
-- lease shares of lease.go: a long lease while the count stays at most
-- N/QUIET, QUIET = 32, and a short one of at most N/BUSY, BUSY = 2000.

-- The script calls no math.floor: x % m is x - floor(x/m)*m worked out by the
-- interpreter itself, where a call of a library function costs about as much
-- as a dozen of its steps. For integers v ≥ 0, (v - v % 256) / 256 is
-- floor(v/256) exactly.

-- a/b rounded down, exactly, for integers a and b > 0 (float division alone
-- can land one off: a % b may come out negative or ≥ b, and is corrected).
local function floordiv(a, b)
  local r = a % b
  local q = (a - r) / b
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
  local m = v % 256
  local c = (v - m) / 256
  if m == 0 then m = 255 end -- a lease group
  return j * s + floordiv(m * s + 254, 255), c -- rounded up
end

-- find returns where group g of str (np groups, ascending) is and its value,
-- or false and where it would go, scanning from the newest: groups after g
-- are few, the future groups of leases. With bump, a later group that is not
-- a lease's (mark 0) means the clock went back, and g becomes that group.
local function find(str, np, g, bump)
  for p = np - 1, 0, -1 do
    local j, v = sunpack('<dd', str, 17 + 16 * p)
    if bump and j > g and v % 256 ~= 0 then g = j end
    if j == g then return g, p, v end
    if j < g then return g, p + 1, false end
  end
  return g, 0, false
end

-- count reads a limit's counter (key: a window of w µs in sub-windows of s) and
-- works out where it stands now. It returns the counter (str, false when
-- there is none; one counted with another s is carried over), its np groups and their
-- total, the current group idx, the count held now, and for writing it back:
-- the current group's value cur (false when it has none) and where it is or
-- would go (pos), and how many of the oldest groups are stale (drop, holding
-- dropped requests).
local function count(key, w, s)
  -- pcall: a key held as another type than a string (written by hand, or by
  -- something else sharing the prefix) is no counter, as a string that is
  -- not one is below, and starts afresh (SET replaces it). With call, its
  -- WRONGTYPE error would fail the whole batch, every check in it taken for
  -- a Redis outage.
  local str = redis.pcall('GET', key)
  if type(str) == 'table' then str = false end
  local np, total, cs = 0, 0, 0
  if str then
    np = (#str - 16) / 16
    if np >= 1 and np % 1 == 0 then cs, total = sunpack('<dd', str) end
    -- Not a counter (too short to unpack, of another length, or a header
    -- no counter has: NaN fails every test, and a total past 2^53 no count
    -- reaches): start afresh.
    if not (cs > 0 and total >= 0 and total < 9007199254740992) then
      str, np, total = false, 0, 0
    elseif cs ~= s then
      -- Counted with another s: carried over, as window.carry in
      -- ratelimit/window.go does (here, not in a function of its own,
      -- which would be one more closure made at every call). The count
      -- must not start over when the limit's window changes: replicas
      -- that disagree on it for a while would each restart it at every
      -- check. Every group that may still count (from the current group
      -- idx-span on) and whose bound plus w is not before now stays
      -- counted, all in one group whose bound is the latest of theirs,
      -- rounded up. When that bound is a lease's (a long lease's future
      -- group, or a short one's current group, up to a whole old
      -- sub-window after now), in the current sub-window or a later one,
      -- the group stays a lease's (mark 0, its bound the end of its
      -- sub-window): were it taken for a clock gone back, every later
      -- request would be counted in it, until long after its own time.
      -- The counter is written (deleted, when nothing is left) at once (a
      -- denied check writes nothing else), so that the next check finds
      -- it carried, as the local limiter keeps it.
      local idx = find(str, np, floordiv(now, cs), true)
      local held, last, leased = 0, nil, false
      for p = 0, np - 1 do
        local j, v = sunpack('<dd', str, 17 + 16 * p)
        if j >= idx - span then
          local l, c = latest(j, v, cs)
          if c > 0 and l + w >= now then
            held = held + c
            if not last or l > last then last, leased = l, v % 256 == 0 end
          end
        end
      end
      str, np, total = false, 0, 0
      if held > 0 then
        local g = floordiv(last - 1, s)
        local m = floordiv((last - g * s) * 255 + s - 1, s)
        if leased and g >= floordiv(now, s) then m = 0 end -- still a lease's
        str, np, total = spack('<dddd', s, held, g, held * 256 + m), 1, held
        local ttl = floordiv((g + 1) * s + w + 1 - now + 999, 1000)
        if not (ttl >= 1) then ttl = 1 elseif ttl > 1e12 then ttl = 1e12 end -- as in record
        redis.call('SET', key, str, 'PX', format('%d', ttl))
      else
        -- Nothing left to carry: the counter is void, as the local
        -- limiter's window is. Left as it was, it would count again under
        -- its old window, should that come back (another replica's check).
        redis.call('DEL', key)
      end
    end
  end
  local idx, held, cur, drop, dropped, pos = floordiv(now, s), 0, false, 0, 0, 0
  if str then
    -- pos: where group idx is (cur: its value) or would go. A later
    -- group that is not a lease's means the clock went back: count as of it.
    idx, pos, cur = find(str, np, idx, true)
    -- The groups that no longer count are the oldest: those before
    -- idx-span (stale: cut at the next write) and those whose bound is
    -- more than W ago (kept, as the local limiter keeps them until they
    -- are stale). Every later group counts: its bound is at least j*s.
    local oldest = idx - span
    held = total
    for p = 0, np - 1 do
      local j, v = sunpack('<dd', str, 17 + 16 * p)
      if j < oldest then
        local c = (v - v % 256) / 256
        held, drop, dropped = held - c, p + 1, dropped + c
      elseif j * s + w >= now then
        break
      else
        local l, c = latest(j, v, s)
        if l + w < now then held = held - c end -- counted while bound + W ≥ now
      end
    end
  end
  return str, np, total, idx, held, cur, drop, dropped, pos
end

-- wait returns the µs until a denied limit (from count) would allow a
-- request: 0 unless it is exhausted.
local function wait(str, np, idx, held, n, w, s)
  local t = 0
  if held >= n and str then
    -- The counted groups stop counting oldest first, each at bound + W + 1:
    -- visit them in index order (at most span+1 of them) until enough are gone.
    local need, freed, oldest = held - n + 1, 0, idx - span
    for p = 0, np - 1 do
      if freed >= need then break end
      local j, v = sunpack('<dd', str, 17 + 16 * p)
      if j >= oldest then
        local l, c = latest(j, v, s)
        if l + w + 1 > now then
          freed = freed + c
          t = l + w + 1 - now
        end
      end
    end
  end
  return t
end

-- record counts granted requests in a limit (its state from count): one SET
-- of the counter with the stale groups cut and one group changed or added:
-- group idx, or with lg (a long lease of more than one) group idx+span-2.
-- A group a lease (long or short) is counted in is marked 0, and stays so:
-- a carry (count) must know a lease's bound from a request's. The expiry
-- is when the newest group stops counting, the latest of them all. It
-- returns the limit's count after it and the µs until the limit is fully
-- reset.
local function record(key, w, s, str, np, total, idx, held, cur, drop, dropped, pos, granted, lg)
  local g, m = idx, 0
  if lg then g, pos, cur = find(str, np, idx + span - 2, false) end
  local c, leased = granted, granted > 1 -- a lease, long or short
  if cur then
    m = cur % 256
    c = (cur - m) / 256
    if m == 0 then m, leased = 255, true end -- a lease group
    c = c + granted
  end
  if leased then
    m = 0 -- a lease's group stays one: its bound is the end of its sub-window
  else
    local off = now - idx * s
    local mn = 1 -- the mark of now: its offset in 1/255ths of s, rounded up
    if off > 0 then
      mn = floordiv(off * 255, s) + 1
      if mn > 255 then mn = 255 end -- MARKS
    end
    if mn > m then m = mn end
  end
  local v = c * 256 + m
  local head, tail, last, lastv = '', '', g, v
  if str then
    -- Kept: the groups drop..np-1 (0-based), group g replaced or added at pos.
    local from = pos
    if cur then from = pos + 1 end
    if pos > drop then head = sub(str, 17 + 16 * drop, 16 + 16 * pos) end
    if from < np then
      tail = sub(str, 17 + 16 * from)
      last, lastv = sunpack('<dd', str, 17 + 16 * (np - 1))
    end
  end
  -- At least 1ms: SET takes no other (only clocks beyond 2^53 µs, which
  -- doubles cannot hold exactly, come near it). At most 10^12 ms (about 31
  -- years; no counter needs as long): %d of a larger number is no integer
  -- SET takes, nor is NaN, which only a value no counter holds gives, and
  -- an error here would fail the whole batch. Passed as a decimal
  -- integer made here: Redis would turn the number into text with %.17g,
  -- which costs twice as much.
  local ttl = floordiv((last + 1) * s + w + 1 - now + 999, 1000)
  if not (ttl >= 1) then ttl = 1 elseif ttl > 1e12 then ttl = 1e12 end
  redis.call('SET', key, spack('<dd', s, total - dropped + granted) .. head .. spack('<dd', g, v) .. tail, 'PX', format('%d', ttl))
  return held + granted, latest(last, lastv, s) + w + 1 - now
end

-- check1 runs a check of one limit (KEYS[k+1], its N, W, s in args after
-- want and nlim), the case of most checks, and puts its values in out at
-- o+1. It is checkN's steps for one limit, with the limit's state in locals:
-- that spares Redis an eighth of what a check in a batch costs it.
local function check1(k, args, want, out, o)
  local n, w, s = sunpack('<ddd', args, 17)
  local key = KEYS[k + 1]
  local str, np, total, idx, held, cur, drop, dropped, pos = count(key, w, s)
  local granted = want
  if n - held < granted then granted = n - held end
  -- The kind of lease and when it ends: as in checkN.
  local long, lease = (held + granted) * 32 <= n, 0 -- QUIET
  if long then
    lease = (idx + span - 1) * s - now
  else
    local short = (n - n % 2000) / 2000 -- N/BUSY, rounded down
    if short < granted then
      granted = short
      if granted < 1 then granted = 1 end
    end
    lease = (idx + 1) * s - now
  end
  if held >= n then
    -- At most 2^53: Redis casts a reply's number to an integer, and a
    -- larger one (only a value no counter holds gives it) would come back
    -- negative, a denial naming no exhausted limit.
    if held > 9007199254740992 then held = 9007199254740992 end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, lease, held, wait(str, np, idx, held, n, w, s)
    return
  end
  out[o + 1], out[o + 2] = granted, lease
  out[o + 3], out[o + 4] = record(key, w, s, str, np, total, idx, held, cur, drop, dropped, pos, granted, long and granted > 1)
end

-- ST holds 12 values per limit of the check at hand (one table for all:
-- tables and redis.call are what a script pays for). checkN makes it, with
-- room for two limits, when a call first needs it: a call of one-limit
-- checks only (an idle Redis's usual call) makes no table but out.
local ST

-- checkN runs a check of any number of limits: its limits are
-- KEYS[k+1..k+nkeys] with their N, W, s in args after want and nlim. It
-- puts the check's values in out at o+1.
local function checkN(k, nkeys, args, want, out, o)
  if not ST then ST = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} end
  -- Pass 1: the count of every limit.
  local allowed = true
  local granted = want
  for i = 1, nkeys do
    local n, w, s = sunpack('<ddd', args, 24 * i - 7)
    local str, np, total, idx, held, cur, drop, dropped, pos = count(KEYS[k + i], w, s)
    local b = 12 * (i - 1)
    ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6] = n, w, s, str, idx, held
    ST[b + 7], ST[b + 8], ST[b + 9], ST[b + 10], ST[b + 11], ST[b + 12] = cur, np, total, drop, dropped, pos
    if held >= n then allowed = false end
    if n - held < granted then granted = n - held end
  end

  -- The kind of lease (see KEYS above): long while every limit stays at
  -- most N/32 with it, else short, at most N/2000. lease is when it ends
  -- (for an exact check, when one would: lease.go sizes the next by it).
  local long, lease = true, nil
  for i = 1, nkeys do
    local b = 12 * (i - 1)
    local n, held = ST[b + 1], ST[b + 6]
    if (held + granted) * 32 > n then long = false end -- QUIET
  end
  for i = 1, nkeys do
    local b = 12 * (i - 1)
    local n, s, idx = ST[b + 1], ST[b + 3], ST[b + 5]
    local short = (n - n % 2000) / 2000 -- N/BUSY, rounded down
    if not long and short < granted then
      granted = short
      if granted < 1 then granted = 1 end
    end
    local left = (idx + 1) * s - now
    if long then left = (idx + span - 1) * s - now end
    if lease == nil or left < lease then lease = left end
  end

  out[o + 1], out[o + 2] = allowed and granted or 0, lease or 0
  if not allowed then
    for i = 1, nkeys do
      local b = 12 * (i - 1)
      local n, w, s, str, idx, held, np = ST[b + 1], ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6], ST[b + 8]
      if held > 9007199254740992 then held = 9007199254740992 end -- as in check1
      out[o + 2 * i + 1], out[o + 2 * i + 2] = held, wait(str, np, idx, held, n, w, s)
    end
    return
  end

  -- Pass 2: count the request in every limit.
  local lg = long and granted > 1
  for i = 1, nkeys do
    local b = 12 * (i - 1)
    local w, s, str, idx, held = ST[b + 2], ST[b + 3], ST[b + 4], ST[b + 5], ST[b + 6]
    local cur, np, total, drop, dropped, pos = ST[b + 7], ST[b + 8], ST[b + 9], ST[b + 10], ST[b + 11], ST[b + 12]
    out[o + 2 * i + 1], out[o + 2 * i + 2] = record(KEYS[k + i], w, s, str, np, total, idx, held, cur, drop, dropped, pos, granted, lg)
  end
end

-- out starts with room for one check of one limit, which every call holds
-- at least, so an idle Redis's usual call never grows it.
local out, o, k = {0, 0, 0, 0}, 0, 0
for a = 3, #ARGV do
  local args = ARGV[a]
  local want, nkeys = sunpack('<dd', args)
  if nkeys == 1 then
    check1(k, args, want, out, o)
  else
    checkN(k, nkeys, args, want, out, o)
  end
  o, k = o + 2 + 2 * nkeys, k + nkeys
end
return out
