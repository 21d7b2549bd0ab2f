-- RPC todo-summary: counts the items of the shared list (record todo/list),
-- read with ctx.records like any handler. Returns e.g. "1 of 3 done".
return function(_, ctx)
  local list = ctx.records.read("todo/list")
  local items = list and list.items or {}
  local done = 0
  for _, item in ipairs(items) do
    if item.done == true then done = done + 1 end
  end
  return string.format("%d of %d done", done, #items)
end
