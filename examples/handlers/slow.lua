-- Never answers in time: waits (without blocking the server) longer than
-- rpc.responseTimeout, so the caller gets RESPONSE_TIMEOUT.
return function(_, ctx)
  ctx.sleep(60000)
  return "too late"
end
