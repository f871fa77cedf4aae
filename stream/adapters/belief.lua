-- Atomic belief update for one user: decay + fuse + TTL refresh + event-id record.
-- Mirrors stream/belief.py (fuse, apply_verified) operation for operation; keep them in step.
--
-- KEYS[1] belief hash   {prefix}:{user}:b  fields B, P, t, n, v, mv, f, fr, fv, and a:<jurisdiction>/<surface>@<policy version>
--                                          (f = max(fr, fv): fr the rms floor of the evidence, fv the largest
--                                          floor of the model versions before the current one)
-- KEYS[2] event-id zset {prefix}:{user}:e  member event id, score its observed_at (processing time
--                                          for verified ages); trimmed to the max_past window
-- ARGV: mode ("e" estimates | "v" verified | "a" actions), now, half_life_s, ttl_ms, future_tol_s, max_past_s,
--       model_version, floor (the model version's least error floor in years: no evidence counts with less), then
--   mode e: (event_id, observed_at, mean_age, std_age, floor) repeated; the belief's floor f is the rms of
--           its events' floors weighted like its mean (the decayed precisions)
--   mode v: event_id, verified_at, verified_age
--   mode a (ARGV is only: "a", ttl_ms, then field/value pairs): the last action per surface (hysteresis
--           state), in one call instead of an HSET and a PEXPIRE; a TTL is set only where the key has
--           none (a user with no belief yet), so it never extends the belief's retention. Returns {}.
-- Returns (all strings; Redis would truncate Lua numbers to integers):
--   codes (one char per input: A applied, D duplicate, I ignored, X invalid, F future, O too old),
--   exists, B, P, t, n, v, mv, f, fr, fv, then action field/value pairs.

local YEAR_S = 365.25 * 86400.0
local VERIFIED_PRECISION = 1.0 / (0.01 * 0.01)
local MIN_AGE, MAX_AGE, MIN_STD = 0.0, 130.0, 0.05
-- The event-id log is bounded per user: only the newest MAX_EVENT_IDS ids are kept (one id per event,
-- ~40 bytes each). A redelivery older than that many newer events of the same user would count again;
-- the belief's error floor bounds what any double count can do to its std.
local MAX_EVENT_IDS = 5000

local bkey, ekey = KEYS[1], KEYS[2]
local mode = ARGV[1]
if mode == 'a' then
  for k = 3, #ARGV, 2 do
    redis.call('HSET', bkey, ARGV[k], ARGV[k + 1])
  end
  redis.call('PEXPIRE', bkey, ARGV[2], 'NX')
  return {}
end
local now = tonumber(ARGV[2])
local half_life = tonumber(ARGV[3])
local ttl_ms = ARGV[4]
local future_tol = tonumber(ARGV[5])
local max_past = tonumber(ARGV[6])
local model_version = ARGV[7]
local floor = tonumber(ARGV[8])

local function fmt(x) return string.format('%.17g', x) end
local function finite(x) return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge end
local function decay_factor(dt)
  if dt <= 0.0 then return 1.0 end
  return 2.0 ^ (-dt / half_life)
end

redis.call('ZREMRANGEBYSCORE', ekey, '-inf', '(' .. fmt(now - max_past))

local cur = redis.call('HMGET', bkey, 'B', 'P', 't', 'n', 'v', 'mv', 'f', 'fr', 'fv')
local exists = cur[1] ~= false
local B, P, T, N, V, MV, F, FR, FV
if exists then
  B, P, T, N = tonumber(cur[1]), tonumber(cur[2]), tonumber(cur[3]), tonumber(cur[4])
  V, MV, F = cur[5] == '1', cur[6] or '', tonumber(cur[7] or '0')
  FR = tonumber(cur[8] or '') or F  -- a belief written before fr existed: its floor was the rms
  FV = tonumber(cur[9] or '') or 0.0
end

local codes = {}
local wrote = false

if mode == 'e' then
  local pts_t, pts_b, pts_p, pts_f = {}, {}, {}, {}
  local i = 9
  while i <= #ARGV do
    local id = ARGV[i]
    local obs, mean, std = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local ev_floor = tonumber(ARGV[i + 4])
    i = i + 5
    if redis.call('ZSCORE', ekey, id) then
      codes[#codes + 1] = 'D'
    elseif not (finite(obs) and finite(mean) and finite(std) and mean >= MIN_AGE and mean <= MAX_AGE
                and std >= MIN_STD) then
      codes[#codes + 1] = 'X'
    elseif obs > now + future_tol then
      codes[#codes + 1] = 'F'
    elseif obs < now - max_past then
      codes[#codes + 1] = 'O'
    else
      redis.call('ZADD', ekey, fmt(obs), id)
      wrote = true
      if exists and V then
        codes[#codes + 1] = 'I'
      else
        local t = math.min(obs, now)
        pts_t[#pts_t + 1] = t
        pts_b[#pts_b + 1] = t - mean * YEAR_S
        pts_p[#pts_p + 1] = 1.0 / (std * std)
        if finite(ev_floor) and ev_floor > floor then pts_f[#pts_f + 1] = ev_floor else pts_f[#pts_f + 1] = floor end
        codes[#codes + 1] = 'A'
      end
    end
  end
  if #pts_t > 0 then
    local ref_t = pts_t[1]
    for k = 2, #pts_t do ref_t = math.max(ref_t, pts_t[k]) end
    if exists then ref_t = math.max(ref_t, T) end
    local anchor = pts_b[1]
    if exists then anchor = B end
    local total_p, weighted, floor_sq = 0.0, 0.0, 0.0
    if exists then
      local w = P * decay_factor(ref_t - T)
      total_p = total_p + w
      local old_floor = math.max(FR, floor)
      floor_sq = floor_sq + w * old_floor * old_floor
      if MV ~= model_version and MV ~= '' then FV = math.max(FV, F) end  -- a version switch never narrows
    end
    for k = 1, #pts_t do
      local w = pts_p[k] * decay_factor(ref_t - pts_t[k])
      total_p = total_p + w
      weighted = weighted + w * (pts_b[k] - anchor)
      floor_sq = floor_sq + w * pts_f[k] * pts_f[k]
    end
    B = anchor + weighted / total_p
    P = total_p
    T = ref_t
    N = (exists and N or 0) + #pts_t
    V = false
    MV = model_version
    FR = math.sqrt(floor_sq / total_p)
    if not exists then FV = 0.0 end
    F = math.max(FR, FV)
    exists = true
  end
elseif mode == 'v' then
  local id, vat, vage = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
  if redis.call('ZSCORE', ekey, id) then
    codes[1] = 'D'
  elseif not (finite(vage) and finite(vat) and vage >= MIN_AGE and vage <= MAX_AGE) then
    codes[1] = 'X'
  elseif vat > now + future_tol then
    codes[1] = 'F'
  else
    redis.call('ZADD', ekey, fmt(now), id)
    wrote = true
    local t = math.min(vat, now)
    B = t - vage * YEAR_S
    P = VERIFIED_PRECISION
    if exists then T = math.max(t, T) else T = t end
    N = (exists and N or 0) + 1
    V = true
    MV = exists and MV or ''
    F, FR, FV = 0.0, 0.0, 0.0
    exists = true
    codes[1] = 'A'
  end
else
  return redis.error_reply('unknown mode ' .. tostring(mode))
end

if wrote then
  redis.call('HSET', bkey, 'B', fmt(B), 'P', fmt(P), 't', fmt(T), 'n', tostring(N), 'v', V and '1' or '0',
             'mv', MV, 'f', fmt(F), 'fr', fmt(FR), 'fv', fmt(FV))
  redis.call('PEXPIRE', bkey, ttl_ms)
  redis.call('ZREMRANGEBYRANK', ekey, 0, -(MAX_EVENT_IDS + 1))
  redis.call('PEXPIRE', ekey, ttl_ms)
end

local out = {table.concat(codes), '0', '', '', '', '', '', '', '', '', ''}
if exists then
  out[2] = '1'
  out[3], out[4], out[5], out[6] = fmt(B), fmt(P), fmt(T), tostring(N)
  out[7], out[8], out[9], out[10], out[11] = V and '1' or '0', MV, fmt(F), fmt(FR), fmt(FV)
end
local all = redis.call('HGETALL', bkey)
for k = 1, #all, 2 do
  if string.sub(all[k], 1, 2) == 'a:' then
    out[#out + 1] = all[k]
    out[#out + 1] = all[k + 1]
  end
end
return out
