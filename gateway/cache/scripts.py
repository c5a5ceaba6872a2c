"""The Lua scripts of the Redis score cache (gateway/redisio/commands.py runs them).

Every script gets one query's keys, all under the query's hash tag (one slot, one node):
KEYS[1] its hash of scores, KEYS[2] its leases, KEYS[3..] its spill buckets. A query's first
`limit` passages live in its hash; once that is full, further passages go to the bucket their
digest's first byte picks, so each hash stays small enough for Redis' compact listpack encoding.
A passage is never in two places: it is written where it already is, else in the query's hash
while there is room, else in its bucket; reads look in the hash, then in the bucket.

A lease is a field of the leases hash, passage digest -> "<owner>|<expiry in ms, server time>":
whoever scores a pair claims it first, so other processes wait for its score instead of paying
for it too. Expiry is kept per field (a hash field has no TTL of its own before Redis 7.4) and
read from the server's clock, so processes on different machines agree on it.
"""

from __future__ import annotations

# Reads every digest's score; with a lease length, also claims each missing one not leased to
# another owner. ARGV: owner, lease ms (0 = claim nothing), then the digests.
# Returns per digest: its stored value; else 0 when leased to the caller now; else the ms left
# on another owner's lease; else nil.
LOOKUP = """
local owner, lease_ms = ARGV[1], tonumber(ARGV[2])
local buckets = #KEYS - 2
local found = {}
for first = 3, #ARGV, 1000 do  -- unpack is bounded by Lua's stack
  local part = redis.call('HMGET', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
  for i = 1, #part do found[first - 3 + i] = part[i] end
end
local now, claimed = nil, false
for i = 1, #ARGV - 2 do
  local digest = ARGV[i + 2]
  if not found[i] then
    found[i] = redis.call('HGET', KEYS[3 + digest:byte(1) % buckets], digest)
  end
  if not found[i] and lease_ms > 0 then
    if not now then
      local time = redis.call('TIME')
      now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    end
    local holder, expiry = string.match(redis.call('HGET', KEYS[2], digest) or '', '^(.*)|(%d+)$')
    if holder and holder ~= owner and tonumber(expiry) > now then
      found[i] = tonumber(expiry) - now
    else
      redis.call('HSET', KEYS[2], digest, owner .. '|' .. string.format('%d', now + lease_ms))
      claimed = true
      found[i] = 0
    end
  end
end
if claimed and redis.call('PTTL', KEYS[2]) < lease_ms then
  redis.call('PEXPIRE', KEYS[2], lease_ms)
end
return found
"""

# Stores scores and ends the caller's leases on them. ARGV: owner, ttl seconds, the query hash's
# field limit, then digest, score pairs. The TTL is renewed on the query's hash, and on every
# bucket once the hash is full, so a query in use keeps all its scores.
PUT = """
local owner, ttl, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = owner .. '|'
local buckets = #KEYS - 2
local size = redis.call('HLEN', KEYS[1])
local spilled = false
for i = 4, #ARGV, 2 do
  local digest, score = ARGV[i], ARGV[i + 1]
  local bucket = KEYS[3 + digest:byte(1) % buckets]
  if redis.call('HEXISTS', KEYS[1], digest) == 0
      and (size >= limit or redis.call('HEXISTS', bucket, digest) == 1) then
    redis.call('HSET', bucket, digest, score)
    spilled = true
  else
    size = size + redis.call('HSET', KEYS[1], digest, score)
  end
  local lease = redis.call('HGET', KEYS[2], digest)
  if lease and string.sub(lease, 1, #mine) == mine then
    redis.call('HDEL', KEYS[2], digest)
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
if spilled or size >= limit then
  for b = 3, #KEYS do redis.call('EXPIRE', KEYS[b], ttl) end
end
return size
"""

# Extends the caller's leases on digests it is still scoring (a slow provider call) to lease ms from
# now. Never creates one: a lease its owner's write or release ended, or another owner claimed
# after it ran out, stays as it is. KEYS: the query's leases only. ARGV: owner, lease ms, digests.
RENEW = """
local mine, lease_ms = ARGV[1] .. '|', tonumber(ARGV[2])
local time = redis.call('TIME')
local expiry = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) + lease_ms
local renewed = 0
for i = 3, #ARGV do
  local lease = redis.call('HGET', KEYS[1], ARGV[i])
  if lease and string.sub(lease, 1, #mine) == mine then
    redis.call('HSET', KEYS[1], ARGV[i], mine .. string.format('%d', expiry))
    renewed = renewed + 1
  end
end
if renewed > 0 and redis.call('PTTL', KEYS[1]) < lease_ms then
  redis.call('PEXPIRE', KEYS[1], lease_ms)
end
return renewed
"""

# Ends the caller's leases on digests it will not store a score for, so waiters take over at once.
# KEYS: the query's leases only. ARGV: owner, then the digests.
RELEASE = """
local mine = ARGV[1] .. '|'
for i = 2, #ARGV do
  local lease = redis.call('HGET', KEYS[1], ARGV[i])
  if lease and string.sub(lease, 1, #mine) == mine then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
"""
