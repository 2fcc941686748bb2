-- Bound to home/+/motion (after_publish in the example config: the original is delivered
-- untouched and without delay). For motion=true events, publishes an alert to alerts/<room>
-- with the device, its room (kv key room:<device>, default "unknown") and received_at.
-- Also bound to home/+/room: a publish there (retained, e.g. payload "hallway") records the
-- device's room in kv.
local home = require("home")

local M = {}

function M.on_publish(msg, ctx)
  local device, kind = home.parse_topic(msg.topic)
  if kind == "room" then
    if #msg.payload > 0 and #msg.payload <= 64 then
      kv.set("room:" .. device, msg.payload)
    end
    return nil
  end
  local ev, err = home.decode_object(msg.payload)
  if ev == nil then
    log.warn("ignoring motion event from", device, ":", err)
    return nil
  end
  if ev.motion ~= true then
    return nil
  end
  local room = kv.get("room:" .. device) or "unknown"
  local alert = {
    device = device,
    room = room,
    motion = true,
    ts = ev.ts,
    received_at = msg.received_at,
  }
  local ok, why = mqtt.publish("alerts/" .. room, json.encode(alert), { qos = 1 })
  if not ok then
    log.warn("alert not published:", why)
  end
  return nil
end

return M
