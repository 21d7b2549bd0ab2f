local json = require "moonstream.json"
local validate = require "moonstream.validate"

local array, null = json.array, json.null

local function emit()
  return { topic = "event", action = "emit", eventName = "a", data = 1 }
end

local function jif(index, reason)
  return ("Failed to parse JIF object at index %d. Reason: %s"):format(index, reason)
end

describe("moonstream.validate", function()
  describe("envelope", function()
    local BODY_MISSING = 'Invalid message: the "body" parameter must exist.'
    local BODY_NOT_ARRAY = 'Invalid message: the "body" parameter must be a non-empty array of Objects.'
    local AUTHDATA_OBJECT = 'Invalid message: the "authData" parameter must be an object'
    local AUTHDATA_DISABLED = "Authentication using authData is disabled. Try using a token instead."
    local TOKEN = 'Invalid message: the "token" parameter must be a non-empty string'

    it("returns nil when the body is a non-empty array and unknown keys are present", function()
      assert.is_nil(validate.envelope({ foo = 1, extra = { a = array { 1 } }, body = array { emit() } }))
    end)

    it("returns the body-must-exist text when body is missing or null", function()
      assert.equal(BODY_MISSING, validate.envelope({}))
      assert.equal(BODY_MISSING, validate.envelope({ body = null }))
    end)

    it("returns the non-empty-array text when body is empty, an object or a string", function()
      assert.equal(BODY_NOT_ARRAY, validate.envelope({ body = array {} }))
      assert.equal(BODY_NOT_ARRAY, validate.envelope({ body = emit() }))
      assert.equal(BODY_NOT_ARRAY, validate.envelope({ body = "x" }))
    end)

    it("returns the authData text when authData is a string or null", function()
      assert.equal(AUTHDATA_OBJECT, validate.envelope({ authData = "x", body = array { emit() } }))
      assert.equal(AUTHDATA_OBJECT, validate.envelope({ authData = null, body = array { emit() } }))
      assert.equal(AUTHDATA_OBJECT, validate.envelope({ authData = array {}, body = array { emit() } }))
    end)

    it("returns nil for an authData object when authData is allowed (the default)", function()
      assert.is_nil(validate.envelope({ authData = { username = "x" }, body = array { emit() } }))
      assert.is_nil(validate.envelope({ authData = {}, body = array { emit() } }, { allowAuthData = true }))
    end)

    it("returns the disabled text for any authData when allowAuthData is false", function()
      local opts = { allowAuthData = false }
      assert.equal(AUTHDATA_DISABLED, validate.envelope({ authData = { username = "a" }, body = array { emit() } }, opts))
      assert.equal(AUTHDATA_DISABLED, validate.envelope({ authData = "x", body = array { emit() } }, opts))
      assert.is_nil(validate.envelope({ token = "t", body = array { emit() } }, opts))
    end)

    it("returns the token text when token is empty, a number or null", function()
      assert.equal(TOKEN, validate.envelope({ token = "", body = array { emit() } }))
      assert.equal(TOKEN, validate.envelope({ token = 5, body = array { emit() } }))
      assert.equal(TOKEN, validate.envelope({ token = null, body = array { emit() } }))
      assert.is_nil(validate.envelope({ token = "whatever", body = array { emit() } }))
    end)

    it("checks body, then authData, then token", function()
      assert.equal(BODY_MISSING, validate.envelope({ authData = "x" }))
      assert.equal(BODY_NOT_ARRAY, validate.envelope({ token = 5, body = array {} }))
      assert.equal(AUTHDATA_OBJECT, validate.envelope({ authData = "x", token = 5, body = array { emit() } }))
    end)
  end)

  describe("command", function()
    it("returns nil for every valid shape of section 4", function()
      local valid = {
        emit(),
        { topic = "event", action = "emit", eventName = "a" },
        { topic = "event", action = "emit", eventName = "a", data = null },
        { topic = "record", action = "read", recordName = "r" },
        { topic = "record", action = "head", recordName = "r" },
        { topic = "record", action = "delete", recordName = "r" },
        { topic = "record", action = "write", recordName = "r", data = { x = 1 } },
        { topic = "record", action = "write", recordName = "r", data = null },
        { topic = "record", action = "write", recordName = "r", data = "str", path = "", version = -1 },
        { topic = "record", action = "notify", recordNames = array { "a", "b" } },
        { topic = "record", action = "notify", recordNames = array {} },
        { topic = "list", action = "read", listName = "l" },
        { topic = "list", action = "delete", listName = "l" },
        { topic = "list", action = "write", listName = "l", data = array { "a", "" }, version = 3 },
        { topic = "list", action = "write", listName = "l", data = array {} },
        { topic = "rpc", action = "make", rpcName = "add-two", data = { numA = 1 } },
        { topic = "rpc", action = "make", rpcName = "nothing" },
        { topic = "presence", action = "query" },
        { topic = "presence", action = "query", names = array { "fred", "" } },
      }
      for i, cmd in ipairs(valid) do
        assert.is_nil(validate.command(cmd), "valid command #" .. i)
      end
    end)

    it("rejects a command that is not an object", function()
      for _, cmd in ipairs { 1, null, "x", true, array { emit() } } do
        assert.equal("the command must be an object", validate.command(cmd))
      end
    end)

    it("names 'topic' when the topic is missing, empty or not a string", function()
      local reason = "property 'topic' must be a non-empty string"
      assert.equal(reason, validate.command({ action = "emit", eventName = "a" }))
      assert.equal(reason, validate.command({ topic = "", action = "emit", eventName = "a" }))
      assert.equal(reason, validate.command({ topic = 1, action = "emit", eventName = "a" }))
    end)

    it("names an unknown topic; topics are case-sensitive", function()
      assert.equal("unknown topic 'evnt'", validate.command({ topic = "evnt", action = "emit", eventName = "a" }))
      assert.equal("unknown topic 'EVENT'", validate.command({ topic = "EVENT", action = "emit", eventName = "a" }))
    end)

    it("cuts a long unknown topic in the reason", function()
      local reason = validate.command({ topic = ("x"):rep(10000), action = "emit" })
      assert.equal("unknown topic '" .. ("x"):rep(64) .. "...'", reason)
    end)

    it("names 'action' when the action is missing, empty or not a string", function()
      local reason = "property 'action' must be a non-empty string"
      assert.equal(reason, validate.command({ topic = "event", eventName = "a" }))
      assert.equal(reason, validate.command({ topic = "event", action = "", eventName = "a" }))
      assert.equal(reason, validate.command({ topic = "event", action = null, eventName = "a" }))
    end)

    it("names an unknown action and its topic; actions are case-sensitive", function()
      assert.equal("unknown action 'fetch' for topic 'record'",
        validate.command({ topic = "record", action = "fetch", recordName = "a" }))
      assert.equal("unknown action 'subscribe' for topic 'event'",
        validate.command({ topic = "event", action = "subscribe", eventName = "a" }))
      assert.equal("unknown action 'subscribe' for topic 'presence'",
        validate.command({ topic = "presence", action = "subscribe" }))
      assert.equal("unknown action 'head' for topic 'list'",
        validate.command({ topic = "list", action = "head", listName = "a" }))
      assert.equal("unknown action 'READ' for topic 'record'",
        validate.command({ topic = "record", action = "READ", recordName = "a" }))
    end)

    it("names recordName when it is missing, empty or not a string", function()
      local reason = "property 'recordName' must be a non-empty string"
      assert.equal(reason, validate.command({ topic = "record", action = "read" }))
      assert.equal(reason, validate.command({ topic = "record", action = "read", recordName = "" }))
      assert.equal(reason, validate.command({ topic = "record", action = "write", recordName = 5, data = {} }))
    end)

    it("names data when a record write has none", function()
      assert.equal("property 'data' is required",
        validate.command({ topic = "record", action = "write", recordName = "r" }))
    end)

    it("names version when it is below -1, fractional or a string", function()
      local reason = "property 'version' must be an integer >= -1"
      for _, v in ipairs { -2, 1.5, "3", -1.5, null, 2 ^ 63 } do
        assert.equal(reason, validate.command({ topic = "record", action = "write", recordName = "r", data = {}, version = v }))
        assert.equal(reason, validate.command({ topic = "list", action = "write", listName = "l", data = array {}, version = v }))
      end
    end)

    it("accepts an integral float version and replaces it by the integer", function()
      local cmd = { topic = "record", action = "write", recordName = "r", data = {}, version = 2.0 }
      assert.is_nil(validate.command(cmd))
      assert.equal("integer", math.type(cmd.version))
      assert.equal(2, cmd.version)
      cmd = { topic = "list", action = "write", listName = "l", data = array {}, version = -1.0 }
      assert.is_nil(validate.command(cmd))
      assert.equal("integer", math.type(cmd.version))
      assert.equal(-1, cmd.version)
    end)

    it("names path when it is not a string", function()
      assert.equal("property 'path' must be a string",
        validate.command({ topic = "record", action = "write", recordName = "r", path = 5, data = 1 }))
    end)

    it("names a property that belongs to another action of the topic", function()
      assert.equal("property 'data' is not allowed for action 'read' of topic 'record'",
        validate.command({ topic = "record", action = "read", recordName = "r", data = {} }))
      assert.equal("property 'version' is not allowed for action 'head' of topic 'record'",
        validate.command({ topic = "record", action = "head", recordName = "r", version = 1 }))
    end)

    it("names a property unknown to the topic", function()
      assert.equal("unknown property 'foo' for topic 'event'",
        validate.command({ topic = "event", action = "emit", eventName = "a", data = 1, foo = 1 }))
      assert.equal("unknown property 'path' for topic 'list'",
        validate.command({ topic = "list", action = "write", listName = "l", data = array { "a" }, path = "a" }))
      assert.equal("unknown property 'recordName' for topic 'event'",
        validate.command({ topic = "event", action = "emit", eventName = "a", recordName = "r" }))
    end)

    it("names the first extra property in byte order, before the missing ones", function()
      assert.equal("unknown property 'a' for topic 'record'",
        validate.command({ topic = "record", action = "read", zz = 1, b = 2, a = 3, y = 4 }))
    end)

    it("names a key that is not a string (a command built in Lua)", function()
      assert.equal("unknown property '1' for topic 'event'",
        validate.command({ topic = "event", action = "emit", eventName = "a", [1] = "x", [true] = 1 }))
    end)

    it("names recordNames when it is not an array of non-empty strings", function()
      local reason = "property 'recordNames' must be an array of non-empty strings"
      assert.equal(reason, validate.command({ topic = "record", action = "notify", recordNames = "r" }))
      assert.equal(reason, validate.command({ topic = "record", action = "notify", recordNames = array { "r", "" } }))
      assert.equal(reason, validate.command({ topic = "record", action = "notify", recordNames = array { "r", 1 } }))
      assert.equal(reason, validate.command({ topic = "record", action = "notify", recordNames = { a = "r" } }))
      assert.equal(reason, validate.command({ topic = "record", action = "notify" }))
    end)

    it("names eventName when it is missing, empty or not a string", function()
      local reason = "property 'eventName' must be a non-empty string"
      assert.equal(reason, validate.command({ topic = "event", action = "emit", data = 1 }))
      assert.equal(reason, validate.command({ topic = "event", action = "emit", eventName = "", data = 1 }))
      assert.equal(reason, validate.command({ topic = "event", action = "emit", eventName = 5 }))
    end)

    it("names rpcName and listName when they are missing", function()
      assert.equal("property 'rpcName' must be a non-empty string", validate.command({ topic = "rpc", action = "make" }))
      assert.equal("property 'listName' must be a non-empty string", validate.command({ topic = "list", action = "read" }))
    end)

    it("names data when list data is not an array of strings", function()
      local reason = "property 'data' must be an array of strings"
      assert.equal(reason, validate.command({ topic = "list", action = "write", listName = "l", data = array { 1 } }))
      assert.equal(reason, validate.command({ topic = "list", action = "write", listName = "l", data = { a = "b" } }))
      assert.equal(reason, validate.command({ topic = "list", action = "write", listName = "l", data = array { "a", null } }))
      assert.equal(reason, validate.command({ topic = "list", action = "write", listName = "l" }))
    end)

    it("names names when presence names are not an array of strings", function()
      local reason = "property 'names' must be an array of strings"
      assert.equal(reason, validate.command({ topic = "presence", action = "query", names = "fred" }))
      assert.equal(reason, validate.command({ topic = "presence", action = "query", names = array { "fred", 1 } }))
    end)
  end)

  describe("batch", function()
    it("returns nil when every command is valid", function()
      assert.is_nil(validate.batch(array { emit(), { topic = "presence", action = "query" } }))
    end)

    it("reports a command that is not an object at index 0", function()
      assert.equal(jif(0, "the command must be an object"), validate.batch(array { 1 }))
      assert.equal(jif(0, "the command must be an object"), validate.batch(array { null }))
    end)

    it("reports the 0-based index of the invalid command", function()
      local body = array {
        emit(),
        { topic = "record", action = "read", recordName = "x" },
        { topic = "record", action = "read" },
      }
      assert.equal(jif(2, "property 'recordName' must be a non-empty string"), validate.batch(body))
    end)

    it("reports only the first invalid command", function()
      local body = array {
        emit(),
        { topic = "record", action = "read", recordName = "" },
        { topic = "nope", action = "x" },
      }
      assert.equal(jif(1, "property 'recordName' must be a non-empty string"), validate.batch(body))
    end)
  end)

  describe("rules (what the C fast path reads)", function()
    it("lists every action's properties with their kind and whether they are required", function()
      local rules = validate.rules()
      assert.same({
        { name = "recordName", kind = "name", required = true },
        { name = "data", kind = "any", required = true },
        { name = "path", kind = "string", required = false },
        { name = "version", kind = "version", required = false },
      }, rules.record.write)
      assert.same({ { name = "eventName", kind = "name", required = true }, { name = "data", kind = "any", required = false } },
        rules.event.emit)
      assert.same({ { name = "recordName", kind = "name", required = true } }, rules.record.head)
      assert.same({ { name = "recordNames", kind = "names", required = true } }, rules.record.notify)
    end)
  end)
end)
