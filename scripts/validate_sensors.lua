-- Bound before_publish to home/+/sensors.
-- Drops a sensor reading that is not valid JSON, lacks a field, has a field of the wrong type,
-- or reports humidity outside 0..100; the drop reason says which. Counts accepted readings.
local home = require("home")

local FIELDS = {
  { name = "temperature", kind = "number" },
  { name = "humidity", kind = "number" },
  { name = "motion", kind = "boolean" },
  { name = "ts", kind = "number" },
}

local M = {}

function M.on_publish(msg, ctx)
  local r, err = home.decode_object(msg.payload)
  if r == nil then
    return drop(err)
  end
  for _, f in ipairs(FIELDS) do
    local v = r[f.name]
    if v == nil or v == json.null then
      return drop("missing field " .. f.name)
    end
    if type(v) ~= f.kind then
      return drop(f.name .. " must be a " .. f.kind)
    end
  end
  if r.humidity < 0 or r.humidity > 100 then
    return drop("humidity out of range (0-100): " .. tostring(r.humidity))
  end
  home.count("readings")
  return nil
end

return M
