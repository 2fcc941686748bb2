-- Bound before_publish to alerts/#. Lets at most one alert per device through every 30 s;
-- the rest are consumed (acknowledged, not routed). Uses an atomic kv counter that expires
-- 30 s after the first alert of a window, so it is exact across workers. Counts alerts sent.
local home = require("home")

-- The window can be tuned without editing the script: kv.set("window_seconds", n) in this
-- block's namespace.
local DEFAULT_WINDOW = 30

local M = {}

function M.on_publish(msg, ctx)
  local alert = home.decode_object(msg.payload)
  local device = alert and alert.device
  if type(device) ~= "string" then
    return drop("alert without a device")
  end
  local window = tonumber(kv.get("window_seconds")) or DEFAULT_WINDOW
  local n = kv.incr("window:" .. device, 1, { ttl = window })
  if n > 1 then
    return consume()
  end
  home.count("alerts")
  return nil
end

return M
