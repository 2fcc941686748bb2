-- Interval block (e.g. every = "30s"): publishes {"ts":..., "alerts":N, "readings":N} to
-- moonwire/heartbeat, retained. N are running totals kept in kv.shared by validate_sensors
-- (readings accepted) and debounce_alerts (alerts let through).
local home = require("home")

local M = {}

function M.on_interval(ctx)
  local beat = {
    ts = math.floor(time.now()),
    alerts = home.counter("alerts"),
    readings = home.counter("readings"),
  }
  mqtt.publish("moonwire/heartbeat", json.encode(beat), { retain = true })
end

return M
