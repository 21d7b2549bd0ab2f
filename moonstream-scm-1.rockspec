rockspec_format = "3.0"
package = "moonstream"
version = "scm-1"
source = {
   url = "git+file:///work/main",
}
description = {
   summary = "A realtime data server speaking the deepstream HTTP API, with a C core",
   detailed = [[
moonstream serves the deepstream HTTP API (POST /api batches of events,
records, RPCs and presence queries; POST /api/auth) from a Lua 5.4 rock whose
C core does HTTP (libmicrohttpd), storage (LevelDB, group-committed fsyncs),
JSON and presence. RPC handlers and event listeners are plain Lua files.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4",
   "luafilesystem",
   "lpeg",            -- Valve rule grammar (Debian lua-lpeg)
   "lrexlib-pcre2",   -- Valve rules' match() (Debian lua-rex-pcre2)
}
test_dependencies = {
   "busted",
}
external_dependencies = {
   MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
   LEVELDB = { header = "leveldb/c.h", library = "leveldb" },
   YAJL = { header = "yajl/yajl_parse.h", library = "yajl" },
   CURL = { library = "curl" }, -- Debian keeps curl.h in a multiarch include dir
   UTHASH = { header = "uthash.h" },
   OPENSSL = { header = "openssl/evp.h", library = "crypto" },
   WSLAY = { header = "wslay/wslay.h", library = "wslay" },
}
build = {
   type = "builtin",
   modules = {
      ["moonstream.core"] = {
         sources = {
            "csrc/core.c", "csrc/pcall.c", "csrc/loop.c", "csrc/http.c", "csrc/store.c",
            "csrc/presence.c", "csrc/json.c", "csrc/httpclient.c", "csrc/ws.c", "csrc/crypto.c",
            "csrc/records.c", "csrc/fastpath.c",
         },
         defines = { "_GNU_SOURCE" },
         libraries = { "microhttpd", "leveldb", "yajl", "curl", "crypto", "wslay" },
         incdirs = { "$(MICROHTTPD_INCDIR)", "$(LEVELDB_INCDIR)", "$(YAJL_INCDIR)", "$(UTHASH_INCDIR)", "$(OPENSSL_INCDIR)", "$(WSLAY_INCDIR)" },
         libdirs = { "$(MICROHTTPD_LIBDIR)", "$(LEVELDB_LIBDIR)", "$(YAJL_LIBDIR)", "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(WSLAY_LIBDIR)" },
      },
      ["moonstream"] = "lua/moonstream/init.lua",
      ["moonstream.auth"] = "lua/moonstream/auth.lua",
      ["moonstream.auth.file"] = "lua/moonstream/auth/file.lua",
      ["moonstream.auth.lua"] = "lua/moonstream/auth/lua.lua",
      ["moonstream.auth.open"] = "lua/moonstream/auth/open.lua",
      ["moonstream.auth.webhook"] = "lua/moonstream/auth/webhook.lua",
      ["moonstream.control"] = "lua/moonstream/control.lua",
      ["moonstream.permissions"] = "lua/moonstream/permissions.lua",
      ["moonstream.valve"] = "lua/moonstream/valve/init.lua",
      ["moonstream.valve.rule"] = "lua/moonstream/valve/rule.lua",
      ["moonstream.valve.js"] = "lua/moonstream/valve/js.lua",
      ["moonstream.yamldoc"] = "lua/moonstream/yamldoc.lua",
      ["moonstream.config_yaml"] = "lua/moonstream/config_yaml.lua",
      ["moonstream.tokens"] = "lua/moonstream/tokens.lua",
      ["moonstream.cli"] = "lua/moonstream/cli.lua",
      ["moonstream.config"] = "lua/moonstream/config.lua",
      ["moonstream.dispatch"] = "lua/moonstream/dispatch.lua",
      ["moonstream.events"] = "lua/moonstream/events.lua",
      ["moonstream.httpapi"] = "lua/moonstream/httpapi.lua",
      ["moonstream.json"] = "lua/moonstream/json.lua",
      ["moonstream.log"] = "lua/moonstream/log.lua",
      ["moonstream.paths"] = "lua/moonstream/paths.lua",
      ["moonstream.records"] = "lua/moonstream/records.lua",
      ["moonstream.rpc"] = "lua/moonstream/rpc.lua",
      ["moonstream.scripts"] = "lua/moonstream/scripts.lua",
      ["moonstream.server"] = "lua/moonstream/server.lua",
      ["moonstream.validate"] = "lua/moonstream/validate.lua",
      ["moonstream.realtime.message"] = "lua/moonstream/realtime/message.lua",
      ["moonstream.realtime.binary"] = "lua/moonstream/realtime/binary.lua",
      ["moonstream.realtime.json_codec"] = "lua/moonstream/realtime/json_codec.lua",
      ["moonstream.static"] = "lua/moonstream/static.lua",
      ["moonstream.realtime"] = "lua/moonstream/realtime/init.lua",
      ["moonstream.realtime.names"] = "lua/moonstream/realtime/names.lua",
      ["moonstream.realtime.registry"] = "lua/moonstream/realtime/registry.lua",
      ["moonstream.realtime.events"] = "lua/moonstream/realtime/events.lua",
      ["moonstream.realtime.listen"] = "lua/moonstream/realtime/listen.lua",
      ["moonstream.realtime.records"] = "lua/moonstream/realtime/records.lua",
      ["moonstream.realtime.rpc"] = "lua/moonstream/realtime/rpc.lua",
      ["moonstream.realtime.presence"] = "lua/moonstream/realtime/presence.lua",
   },
   install = {
      bin = { moonstream = "bin/moonstream" },
   },
}
