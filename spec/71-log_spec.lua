-- Logging (log.lua): the text and JSON line formats, deepstream's level
-- names and numbers, and the server using the configured format.
local log = require "moonstream.log"
local config = require "moonstream.config"
local json = require "moonstream.json"
local H = require "spec.support.helpers"

-- Lines logged while fn runs, with the given format and level.
local function capture(fmt, level, fn)
  local lines = {}
  log.set_format(fmt)
  log.set_level(level)
  log.set_sink(function(line) lines[#lines + 1] = line end)
  local ok, err = pcall(fn)
  log.set_sink(nil)
  log.set_format("text")
  log.set_level("error")
  assert(ok, err)
  return lines
end

describe("log", function()
  it("writes one JSON object a line with time, level, message and fields", function()
    local lines = capture("json", "info", function()
      log.info("hello %s", "world")
      log.event("warn", "disk slow", { path = "/srv/data", ms = 120, ok = false })
    end)
    assert.equal(2, #lines)
    local a, b = json.decode(lines[1]), json.decode(lines[2])
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", a.time)
    assert.equal("info", a.level)
    assert.equal("hello world", a.message)
    assert.same({}, a.fields)
    assert.equal("warn", b.level)
    assert.same({ path = "/srv/data", ms = 120, ok = false }, b.fields)
    assert.is_nil(lines[1]:find("\n", 1, true))
  end)

  it("keeps every JSON line valid whatever the message holds", function()
    local nasty = 'quote " backslash \\ newline \n tab \t nul \0 bell \7 bad utf8 \255\254 end'
    local lines = capture("json", "debug", function()
      log.error("%s", nasty)
      log.event("info", "fields too", { ["k\n"] = "\128x" })
    end)
    local a = assert(json.decode(lines[1]))
    assert.equal(1, #lines[1]:gsub("[^\n]", "") + 1) -- one line
    assert.equal('quote " backslash \\ newline \n tab \t nul \0 bell \7 bad utf8 \239\191\189\239\191\189 end', a.message)
    local b = assert(json.decode(lines[2]))
    assert.same({ ["k\n"] = "\239\191\189x" }, b.fields)
  end)

  it("keeps the text form: time level message key=value", function()
    local lines = capture("text", "info", function()
      log.info("plain %d", 1)
      log.event("info", "moonstream listening on http://127.0.0.1:1", { storage = "./data" })
    end)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ info plain 1$", lines[1])
    assert.matches(" info moonstream listening on http://127%.0%.0%.1:1 storage=%./data$", lines[2])
  end)

  it("accepts deepstream's level names and deepstream 9's numbers", function()
    for given, want in pairs({ DEBUG = "debug", INFO = "info", WARN = "warn", ERROR = "error",
                               [0] = "debug", [1] = "info", [2] = "warn", [3] = "error", warn = "warn" }) do
      assert.equal(want, log.parse_level(given))
      local cfg = assert(config.validate({ logLevel = given }))
      assert.equal(want, cfg.logLevel)
    end
    assert.is_nil(log.parse_level(4))
    assert.is_nil(config.validate({ logLevel = 4 }))
    assert.is_nil(config.validate({ logLevel = "Info" }))
    local lines = capture("text", "WARN", function()
      log.info("hidden")
      log.warn("shown")
    end)
    assert.equal(1, #lines)
    assert.matches("warn shown$", lines[1])
    lines = capture("text", 0, function() log.debug("debug shown") end)
    assert.equal(1, #lines)
  end)

  it("counts warn and error lines even below the threshold", function()
    local warn, err = log.counts.warn, log.counts.error
    capture("text", "error", function()
      log.warn("not shown")
      log.error("shown")
    end)
    assert.equal(warn + 1, log.counts.warn)
    assert.equal(err + 1, log.counts.error)
  end)

  it("validates logFormat", function()
    assert.equal("json", assert(config.validate({ logFormat = "json" })).logFormat)
    assert.equal("text", assert(config.validate({})).logFormat)
    local _, err = config.validate({ logFormat = "yaml" })
    assert.equal("config key 'logFormat' must be one of 'text', 'json' (got 'yaml')", err)
  end)

  it("is what a server with logFormat = \"json\" writes", function()
    local t
    local lines = capture("text", "info", function()
      t = H.start({ logFormat = "json", logLevel = "INFO" })
    end)
    t:stop()
    local listening
    for _, line in ipairs(lines) do
      local obj = assert(json.decode(line), line)
      if obj.message:find("listening on", 1, true) then listening = obj end
    end
    assert(listening, "no listening line")
    assert.equal("info", listening.level)
    assert.equal(t.dir .. "/data", listening.fields.storage)
  end)
end)
