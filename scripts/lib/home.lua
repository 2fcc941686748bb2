-- Helpers shared by the home-automation example blocks (loaded with require("home")).
local M = {}

-- "home/<device>/<kind>" -> device, kind
function M.parse_topic(topic)
  return topic:match("^home/([^/]+)/([^/]+)$")
end

-- Decodes a JSON object payload: returns the table, or nil and a reason fit for drop().
function M.decode_object(payload)
  local v, err = json.decode(payload)
  if v == nil then
    return nil, err
  end
  if type(v) ~= "table" or json.is_array(v) then
    return nil, "invalid JSON: expected an object"
  end
  return v
end

-- Counters the heartbeat block reports; kept in the namespace all blocks share.
function M.count(name)
  return kv.shared.incr("count:" .. name)
end

function M.counter(name)
  return kv.shared.get("count:" .. name) or 0
end

return M
