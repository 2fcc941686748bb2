-- Bound to home/+/sensors (after_publish in the example config, behind validate_sensors, so
-- only valid readings arrive). Splits a reading into retained per-value topics:
-- home/<device>/readings/temperature, …/humidity, …/motion; payload = the value as text
-- ("21.5", "40.2", "false"). Not home/<device>/motion: that topic carries motion events (JSON).
local home = require("home")

local M = {}

function M.on_publish(msg, ctx)
  local device = ctx.matches[1]
  local r = home.decode_object(msg.payload)
  if r == nil then
    return nil
  end
  for _, field in ipairs({ "temperature", "humidity", "motion" }) do
    local v = r[field]
    if v ~= nil and v ~= json.null then
      mqtt.publish("home/" .. device .. "/readings/" .. field, tostring(v), { retain = true })
    end
  end
  return nil
end

return M
