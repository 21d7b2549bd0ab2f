-- A server-side listener for the event "chat": every emit of "chat" (over
-- HTTP, later from realtime clients) reaches it. Errors are logged, never fatal.
return function(data, ctx)
  ctx.log.info("chat from %s: %s", ctx.user and ctx.user.id or "?", type(data) == "table" and tostring(data.text) or tostring(data))
end
