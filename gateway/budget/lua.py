"""The scripts that keep the shared ledger atomic: one per reserve, one per settle or release, one
per write-back of spend settled while the ledger was away.

Each window is a pair of keys: a hash of totals (spent, reserved, tokens in nano-dollars and
tokens; est_spent and est_tokens, the part of spent and tokens the gateway estimated, written
only once non-zero; `warned` once the alert line was crossed; `x:<reservation id>` for each hold
charged when found expired, below) and a sorted set of holds, member
"<reservation id>:<amount>:<tokens>" scored by its expiry in epoch milliseconds (a hold made before
tokens were held reads "<reservation id>:<amount>", 0 tokens). `reserved` is the sum of the live
holds, kept as a counter so a reserve costs O(windows + expired holds), not O(in flight).
Amounts arrive as decimal integer strings and are only added with HINCRBY, so Lua's doubles never
round them; the sums computed in Lua (expired holds) stay far below 2^53.

A hold found expired was most likely left by a process that died mid-call, whose provider may
well have billed it: the reserve that finds it charges it at what it held, as the gateway's
estimate (spent, tokens and their est_ parts), so the ledger errs high, never low, and marks it
`x:<id>`. A settle or write-back that comes for it after all replaces that estimate with what
the call really cost (or with nothing, for a release).
"""

# Heads the scripts that read holds: a hold member's amount and tokens, and the field that marks it
# charged at expiry.
HOLDS = """
local function hold_of(member)
  local id, amount, tokens = string.match(member, '^(.*):(%d+):(%d+)$')
  if not id then
    id, amount = string.match(member, '^(.*):(%d+)$')
    tokens = '0'
  end
  return id, tonumber(amount), tonumber(tokens)
end

local function add(totals, field, value)
  if value ~= 0 then
    redis.call('HINCRBY', totals, field, string.format('%.0f', value))
  end
end

-- The hold `member` ends: freed while it stood; else, if it was charged at expiry, that estimate
-- is taken back (the caller then adds what the call really cost). Whether it was held at all.
local function unhold(totals, holds, member)
  local id, amount, tokens = hold_of(member)
  if redis.call('ZREM', holds, member) == 1 then
    add(totals, 'reserved', -amount)
    return true
  end
  if redis.call('HDEL', totals, 'x:' .. id) == 1 then
    add(totals, 'spent', -amount)
    add(totals, 'tokens', -tokens)
    add(totals, 'est_spent', -amount)
    add(totals, 'est_tokens', -tokens)
    return true
  end
  return false
end
"""

# Heads RESERVE and SETTLE: a call its client has given up on does nothing. ARGV's last is the
# client's give-up time (epoch ms, before its own timeout fires); past it the client has gone on as
# if the call never ran (a hold of its own, a settle kept for write-back), so running it now would
# leave a hold nobody settles or count a spend twice.
IN_TIME = """
local clock = redis.call('TIME')
if tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) > tonumber(ARGV[#ARGV]) then
  return false
end
"""

# Purges expired holds (their holders may have died), then holds `amount` in every window or in none.
# KEYS: per window, its totals hash then its holds set.
# ARGV: now ms, expiry ms, hold member, amount; then per window: limit (-1 = unlimited), ttl seconds;
# then the give-up time (IN_TIME). Returns nil past it, else {1, spent of each window, tokens of each
# window} when held, else {0, the same figures, then window index, spent, reserved for each window
# that would overflow}: a refusal carries the figures too, so a process that was only ever refused
# falls back from what is spent, not from 0.
RESERVE = IN_TIME + HOLDS + """
local function live_reserved(totals, holds, now)
  local counted = tonumber(redis.call('HGET', totals, 'reserved') or '0')
  local reserved = counted
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  local spent, tokens = 0, 0
  for _, member in ipairs(expired) do
    local id, amount, held_tokens = hold_of(member)
    reserved = reserved - amount
    spent, tokens = spent + amount, tokens + held_tokens
    redis.call('HSET', totals, 'x:' .. id, 1)
  end
  -- Charged at what they held, as the gateway's estimate (see above).
  add(totals, 'spent', spent)
  add(totals, 'tokens', tokens)
  add(totals, 'est_spent', spent)
  add(totals, 'est_tokens', tokens)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  end
  if reserved ~= 0 and redis.call('ZCARD', holds) == 0 then
    reserved = 0  -- with no live hold nothing can be reserved, whatever happened to the counter
  end
  if reserved ~= counted then
    -- Only ever an existing hash: writing a missing one here would leave a key without a TTL.
    redis.call('HSET', totals, 'reserved', string.format('%.0f', reserved))
  end
  return reserved
end

local amount = tonumber(ARGV[4])
local spent, over, tokens = {1}, {}, {}
for i = 1, #KEYS / 2 do
  local totals = KEYS[2 * i - 1]
  local reserved = live_reserved(totals, KEYS[2 * i], ARGV[1])
  local window_spent = tonumber(redis.call('HGET', totals, 'spent') or '0')
  local limit = tonumber(ARGV[3 + 2 * i])
  if limit >= 0 and window_spent + reserved + amount > limit then
    table.insert(over, i)
    table.insert(over, window_spent)
    table.insert(over, reserved)
  end
  table.insert(spent, window_spent)
  table.insert(tokens, tonumber(redis.call('HGET', totals, 'tokens') or '0'))
end
for _, value in ipairs(tokens) do
  table.insert(spent, value)
end
if #over > 0 then
  spent[1] = 0
  for _, value in ipairs(over) do
    table.insert(spent, value)
  end
  return spent
end
for i = 1, #KEYS / 2 do
  local totals, holds, ttl = KEYS[2 * i - 1], KEYS[2 * i], ARGV[4 + 2 * i]
  redis.call('ZADD', holds, ARGV[2], ARGV[3])
  redis.call('HINCRBY', totals, 'reserved', ARGV[4])
  redis.call('EXPIRE', totals, ttl)
  redis.call('EXPIRE', holds, ttl)
end
return spent
"""

# Drops the hold wherever it still stands (or takes back what it was charged at expiry, see above),
# adds the cost and tokens, and flags each window whose spend reached its alert line for the first
# time. Release is this with cost and tokens 0 and no alert lines.
# KEYS: as for RESERVE.
# ARGV: hold member, minus its amount (unused: the member says it), cost, tokens, estimated cost,
# estimated tokens; then per window: ttl seconds, alert line (-1 = none); then the give-up time
# (IN_TIME).
# Returns nil past it, else {spent of each window, tokens of each window, then the index of each
# window that just crossed its line}.
SETTLE = IN_TIME + HOLDS + """
local member, cost, tokens, est_cost, est_tokens = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local windows = #KEYS / 2
local result = {}
for i = 1, windows do
  local totals, holds, ttl = KEYS[2 * i - 1], KEYS[2 * i], ARGV[5 + 2 * i]
  unhold(totals, holds, member)
  result[i] = redis.call('HINCRBY', totals, 'spent', cost)
  result[windows + i] = redis.call('HINCRBY', totals, 'tokens', tokens)
  if est_cost ~= '0' or est_tokens ~= '0' then
    redis.call('HINCRBY', totals, 'est_spent', est_cost)
    redis.call('HINCRBY', totals, 'est_tokens', est_tokens)
  end
  redis.call('EXPIRE', totals, ttl)
  redis.call('EXPIRE', holds, ttl)
end
for i = 1, windows do
  local line = tonumber(ARGV[6 + 2 * i])
  if line >= 0 and result[i] >= line and redis.call('HSETNX', KEYS[2 * i - 1], 'warned', 1) == 1 then
    table.insert(result, i)
  end
end
return result
"""

# Adds what one process settled while the ledger was away, once: the batch's id is recorded in
# the same call, so a retry after a lost reply (Redis ran it, the answer never came) adds nothing.
# Ends the holds in Redis of the reservations among them (their settle or release failed), as
# SETTLE does, so none is charged again when found expired. Flags the windows that reached their
# alert line for the first time, as SETTLE does.
# KEYS: the batch's id key, then per window its totals hash, then per window its holds set.
# ARGV: the id key's ttl seconds; then per window: cost, tokens, estimated cost, estimated tokens,
# ttl seconds, alert line (-1 = none); then per hold to end: its window's index, its member.
# Returns {1 if added now else 0, spent of each window, then the index of each window that just
# crossed its line}.
WRITE_BACK = HOLDS + """
local windows = (#KEYS - 1) / 2
local fresh = redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1])
local result = {fresh and 1 or 0}
if fresh then
  for j = 2 + 6 * windows, #ARGV, 2 do
    local i = tonumber(ARGV[j])
    unhold(KEYS[i + 1], KEYS[windows + i + 1], ARGV[j + 1])
  end
end
for i = 1, windows do
  local totals, base = KEYS[i + 1], 1 + 6 * (i - 1)
  if fresh then
    result[i + 1] = redis.call('HINCRBY', totals, 'spent', ARGV[base + 1])
    redis.call('HINCRBY', totals, 'tokens', ARGV[base + 2])
    if ARGV[base + 3] ~= '0' or ARGV[base + 4] ~= '0' then
      redis.call('HINCRBY', totals, 'est_spent', ARGV[base + 3])
      redis.call('HINCRBY', totals, 'est_tokens', ARGV[base + 4])
    end
    redis.call('EXPIRE', totals, ARGV[base + 5])
  else
    result[i + 1] = tonumber(redis.call('HGET', totals, 'spent') or '0')
  end
end
if fresh then
  for i = 1, windows do
    local line = tonumber(ARGV[1 + 6 * i])
    if line >= 0 and result[i + 1] >= line and redis.call('HSETNX', KEYS[i + 1], 'warned', 1) == 1 then
      table.insert(result, i)
    end
  end
end
return result
"""
