-- moonstream.rpc_handlers: Lua handlers run in coroutines, answer at once or later.
local core = require "moonstream.core"
local rpc_mod = require "moonstream.rpc_handlers"
local log = require "moonstream.log"

describe("moonstream.rpc_handlers", function()
  local loop, rpc

  before_each(function()
    loop = core.loop()
    rpc = rpc_mod.new(loop, { response_timeout = 100, api = { greeting = "hi" } })
    log.set_sink(function() end)
  end)

  after_each(function()
    log.set_sink(nil)
    loop:close()
  end)

  local function run_until(done)
    for _ = 1, 500 do
      if done() then return end
      loop:run_once(10)
    end
    error("no answer")
  end

  it("answers at once when the handler returns", function()
    rpc:register("sum", function(d) return d[1] + d[2] end)
    local r = rpc:make("sum", { 2, 3 }, {}, function() error("must not be called") end)
    assert.is_true(r.success)
    assert.equal("5", r.data[1])
  end)

  it("gives the handler its context and the shared api", function()
    rpc:register("ctx", function(_, ctx) return ctx.user.id .. " " .. ctx.greeting .. " " .. ctx.name end)
    local r = rpc:make("ctx", nil, { user = { id = "ann" } })
    assert.equal('"ann hi ctx"', r.data[1])
  end)

  it("has no data key when the handler returns nothing", function()
    rpc:register("nothing", function() end)
    local r = rpc:make("nothing")
    assert.is_true(r.success)
    assert.is_nil(r.data)
  end)

  it("turns a raise into RPC_ERROR without the file and line", function()
    rpc:register("boom", function() error("boom") end)
    local r = rpc:make("boom")
    assert.same({ success = false, error = "boom", errorTopic = "rpc", errorEvent = "RPC_ERROR" }, r)
  end)

  it("turns nil, err into RPC_ERROR and a table error into text", function()
    rpc:register("refuse", function() return nil, "no" end)
    rpc:register("tbl", function() error(setmetatable({}, { __tostring = function() return "custom" end })) end)
    assert.equal("no", rpc:make("refuse").error)
    assert.equal("custom", rpc:make("tbl").error)
  end)

  it("refuses a result that is not JSON", function()
    rpc:register("fn", function() return function() end end)
    local r = rpc:make("fn")
    assert.equal("RPC_ERROR", r.errorEvent)
    assert.equal("The RPC handler returned a value that cannot be sent as JSON.", r.error)
  end)

  it("answers NO_RPC_PROVIDER for an unknown name", function()
    local r = rpc:make("nope")
    assert.equal("NO_RPC_PROVIDER", r.errorEvent)
    assert.equal('No provider was available to handle the RPC "nope".', r.error)
  end)

  it("lets a handler wait for a timer and answer later", function()
    rpc:register("later", function(d, ctx)
      ctx.sleep(10)
      return d * 2
    end)
    local got
    assert.is_nil(rpc:make("later", 21, {}, function(res) got = res end))
    run_until(function() return got end)
    assert.equal("42", got.data[1])
  end)

  it("returns at once when an awaited callback fires synchronously", function()
    rpc:register("sync", function(_, ctx) return ctx.await(function(done) done("now") end) end)
    local r = rpc:make("sync", nil, {}, function() error("must not be called") end)
    assert.equal('"now"', r.data[1])
  end)

  it("ends a slow handler with RESPONSE_TIMEOUT and drops its late answer", function()
    local resume
    rpc:register("slow", function(_, ctx) return ctx.await(function(done) resume = done end) end)
    local calls, got = 0, nil
    rpc:make("slow", nil, {}, function(res) calls = calls + 1; got = res end)
    run_until(function() return got end)
    assert.equal("RESPONSE_TIMEOUT", got.errorEvent)
    resume("too late")
    loop:run_once(0)
    assert.equal(1, calls)
  end)

  it("refuses ctx.await outside a handler", function()
    local api_await
    rpc:register("grab", function(_, ctx) api_await = ctx.await end)
    rpc:make("grab")
    assert.has_error(function() api_await(function() end) end)
  end)
end)
