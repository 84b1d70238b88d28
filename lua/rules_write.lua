-- rules_write.lua: replaces the fleet's rule document if it is still the version the write
-- was made against, records the change in the audit log, and tells the workers; all in
-- one atomic step, so a write is all or nothing and two admins cannot overwrite each other.
--
-- KEYS    1: the rules hash, rl:{admin}:rules (fields `version`, an integer, and `doc`, the
--            document as JSON, whose own version is the new one)
--         2: the audit stream, rl:{admin}:audit
--         (one hash tag: both live on one Redis Cluster slot)
-- ARGV    1: the version the write was made against (0: nothing stored yet)
--         2: the new document; its version (above ARGV 1: one more for an edit, the
--            version a worker held when it restores a store that lost the rules)
--         3: the audit entry (JSON)
--         4: the audit stream's approximate cap (XADD MAXLEN ~)
--         5: the channel that workers subscribe to
--         6: the new document's version
-- Reply   {1, new version} when written; {0, stored version} when another write came first
--         (nothing was written)

local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local next = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'version', next, 'doc', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'change', ARGV[3])
redis.call('PUBLISH', ARGV[5], next)
return {1, next}
