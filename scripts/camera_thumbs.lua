-- Bound after_publish to cameras/+/frame: every complete frame (whole, or reassembled from
-- fchunk chunks by the broker) is already delivered; this block then makes a thumbnail on the
-- media pool, stores frame and thumbnail, publishes the thumbnail retained on
-- cameras/<id>/thumb and an event on cameras/<id>/events.
local M = {}

local function status(camera, err)
  mqtt.publish("cameras/" .. camera .. "/status", json.encode({ error = "thumbnail", detail = err }))
end

function M.on_publish(msg, ctx)
  local camera = ctx.matches[1]
  local ct = msg.props.content_type
  local info, err = media.info(msg.payload, ct)
  if not info then
    log.warn("camera", camera, "sent an unreadable frame:", err)
    status(camera, err)
    return nil
  end
  local thumb, meta = media.thumbnail(msg.payload, { camera = camera, content_type = ct })
  if not thumb then
    log.warn("no thumbnail for camera", camera, ":", meta)
    status(camera, meta)
    return nil
  end
  local frame = media.store(msg.payload, { camera = camera, kind = "frame", content_type = ct or "image/jpeg" })
  local stored = media.store(thumb, { camera = camera, kind = "thumb", content_type = meta.content_type })
  mqtt.publish("cameras/" .. camera .. "/thumb", thumb,
    { retain = true, props = { content_type = meta.content_type } })
  local frame_id = msg.props.user and msg.props.user.frame_id
  mqtt.publish("cameras/" .. camera .. "/events", json.encode({
    frame_id = tonumber(frame_id),
    width = info.width,
    height = info.height,
    bytes = #msg.payload,
    url = frame and frame.url or json.null,
    thumb_url = stored and stored.url or json.null,
    ts = time.now(),
  }))
  return nil
end

return M
