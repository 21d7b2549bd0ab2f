rockspec_format = "3.0"
package = "moonstream"
version = "0.2.0-1"
source = {
   url = "git+https://github.com/moonstream/moonstream.git",
   tag = "v0.2.0",
}
description = {
   summary = "A realtime data server speaking the deepstream HTTP API, with a C core",
   detailed = [[
moonstream serves the deepstream HTTP API (POST /api batches of events,
records, RPCs and presence queries; POST /api/auth) from a Lua 5.4 rock whose
C core does HTTP (libmicrohttpd), storage (LevelDB, group-committed fsyncs),
JSON and presence. RPC handlers and event listeners are plain Lua files.
]],
   homepage = "https://github.com/moonstream/moonstream",
   license = "MIT",
}
-- the core uses epoll, signalfd and eventfd
supported_platforms = { "linux" }
dependencies = {
   "lua >= 5.4, < 5.5",
   "luafilesystem",
   "argparse",      -- the command line
   "lyaml",         -- deepstream's users.yml files (loaded only when one is used)
   "lpeg",            -- Valve rule grammar (Debian lua-lpeg)
   "lrexlib-pcre2",   -- Valve rules' match() (Debian lua-rex-pcre2)
}
test_dependencies = {
   "busted",
   "lua-cjson",     -- spec/05-httpclient_spec.lua
   "luasocket",     -- raw sockets in the HTTP and WebSocket specs
}
test = {
   type = "busted",
}
external_dependencies = {
   MICROHTTPD = { header = "microhttpd.h", library = "microhttpd" },
   LEVELDB = { header = "leveldb/c.h", library = "leveldb" },
   YAJL = { header = "yajl/yajl_parse.h", library = "yajl" },
   CURL = { library = "curl" }, -- Debian keeps curl.h in a multiarch include dir
   UTHASH = { header = "uthash.h" },
   OPENSSL = { header = "openssl/evp.h", library = "crypto" },
   SYSTEMD = { header = "systemd/sd-daemon.h", library = "systemd" },
   HIREDIS = { header = "hiredis/async.h", library = "hiredis" },
}
build = {
   type = "builtin",
   modules = {
      ["moonstream.core"] = {
         sources = {
            "csrc/core.c", "csrc/pcall.c", "csrc/loop.c", "csrc/http.c", "csrc/store.c",
            "csrc/presence.c", "csrc/jbuf.c", "csrc/json.c", "csrc/json_scan.c", "csrc/json_num.c",
            "csrc/json_diag.c", "csrc/json_encode.c", "csrc/json_pool.c", "csrc/httpclient.c", "csrc/ws.c", "csrc/crypto.c",
            "csrc/records.c", "csrc/recmap.c", "csrc/memstore.c", "csrc/engine.c", "csrc/engine_lua.c", "csrc/fastpath.c",
            "csrc/metrics.c", "csrc/notify.c", "csrc/workers.c",
            "csrc/redis.c", "csrc/redis_lua.c", "csrc/redisstore.c",
         },
         defines = { "_GNU_SOURCE" },
         libraries = { "microhttpd", "leveldb", "yajl", "curl", "crypto", "systemd", "hiredis", "pthread" },
         incdirs = { "$(MICROHTTPD_INCDIR)", "$(LEVELDB_INCDIR)", "$(YAJL_INCDIR)", "$(UTHASH_INCDIR)", "$(OPENSSL_INCDIR)", "$(SYSTEMD_INCDIR)", "$(HIREDIS_INCDIR)" },
         libdirs = { "$(MICROHTTPD_LIBDIR)", "$(LEVELDB_LIBDIR)", "$(YAJL_LIBDIR)", "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(SYSTEMD_LIBDIR)", "$(HIREDIS_LIBDIR)" },
      },
      ["moonstream"] = "lua/moonstream/init.lua",
      ["moonstream.auth"] = "lua/moonstream/auth.lua",
      ["moonstream.auth.file"] = "lua/moonstream/auth/file.lua",
      ["moonstream.auth.lua"] = "lua/moonstream/auth/lua.lua",
      ["moonstream.auth.open"] = "lua/moonstream/auth/open.lua",
      ["moonstream.auth.webhook"] = "lua/moonstream/auth/webhook.lua",
      ["moonstream.control"] = "lua/moonstream/control.lua",
      ["moonstream.cluster"] = "lua/moonstream/cluster/init.lua",
      ["moonstream.cluster.url"] = "lua/moonstream/cluster/url.lua",
      ["moonstream.cluster.bus"] = "lua/moonstream/cluster/bus.lua",
      ["moonstream.cluster.kv"] = "lua/moonstream/cluster/kv.lua",
      ["moonstream.cluster.presence"] = "lua/moonstream/cluster/presence.lua",
      ["moonstream.cluster.nodes"] = "lua/moonstream/cluster/nodes.lua",
      ["moonstream.cluster.rpc"] = "lua/moonstream/cluster/rpc.lua",
      ["moonstream.cluster.listen"] = "lua/moonstream/cluster/listen.lua",
      ["moonstream.cluster.changes"] = "lua/moonstream/cluster/changes.lua",
      ["moonstream.permissions"] = "lua/moonstream/permissions.lua",
      ["moonstream.valve"] = "lua/moonstream/valve/init.lua",
      ["moonstream.valve.rule"] = "lua/moonstream/valve/rule.lua",
      ["moonstream.valve.js"] = "lua/moonstream/valve/js.lua",
      ["moonstream.yamldoc"] = "lua/moonstream/yamldoc.lua",
      ["moonstream.config_yaml"] = "lua/moonstream/config_yaml.lua",
      ["moonstream.tokens"] = "lua/moonstream/tokens.lua",
      ["moonstream.cli"] = "lua/moonstream/cli.lua",
      ["moonstream.config"] = "lua/moonstream/config.lua",
      ["moonstream.config.checks"] = "lua/moonstream/config/checks.lua",
      ["moonstream.config.describe"] = "lua/moonstream/config/describe.lua",
      ["moonstream.config.engine"] = "lua/moonstream/config/engine.lua",
      ["moonstream.config.files"] = "lua/moonstream/config/files.lua",
      ["moonstream.config.loader"] = "lua/moonstream/config/loader.lua",
      ["moonstream.config.locate"] = "lua/moonstream/config/locate.lua",
      ["moonstream.config.schema"] = "lua/moonstream/config/schema.lua",
      ["moonstream.config.suggest"] = "lua/moonstream/config/suggest.lua",
      ["moonstream.auth.strategies"] = "lua/moonstream/auth/strategies.lua",
      ["moonstream.dispatch"] = "lua/moonstream/dispatch.lua",
      ["moonstream.lua_listeners"] = "lua/moonstream/lua_listeners.lua",
      ["moonstream.httpapi"] = "lua/moonstream/httpapi.lua",
      ["moonstream.json"] = "lua/moonstream/json.lua",
      ["moonstream.log"] = "lua/moonstream/log.lua",
      ["moonstream.metrics"] = "lua/moonstream/metrics.lua",
      ["moonstream.monitoring"] = "lua/moonstream/monitoring.lua",
      ["moonstream.paths"] = "lua/moonstream/paths.lua",
      ["moonstream.record_engine"] = "lua/moonstream/record_engine.lua",
      ["moonstream.rpc_handlers"] = "lua/moonstream/rpc_handlers.lua",
      ["moonstream.rpc_providers"] = "lua/moonstream/rpc_providers.lua",
      ["moonstream.scripts"] = "lua/moonstream/scripts.lua",
      ["moonstream.server"] = "lua/moonstream/server.lua",
      ["moonstream.subscribers"] = "lua/moonstream/subscribers.lua",
      ["moonstream.validate"] = "lua/moonstream/validate.lua",
      ["moonstream.realtime.message"] = "lua/moonstream/realtime/message.lua",
      ["moonstream.realtime.binary"] = "lua/moonstream/realtime/binary.lua",
      ["moonstream.realtime.json_codec"] = "lua/moonstream/realtime/json_codec.lua",
      ["moonstream.static"] = "lua/moonstream/static.lua",
      ["moonstream.realtime"] = "lua/moonstream/realtime/init.lua",
      ["moonstream.realtime.names"] = "lua/moonstream/realtime/names.lua",
      ["moonstream.realtime.registry"] = "lua/moonstream/realtime/registry.lua",
      ["moonstream.realtime.event_topic"] = "lua/moonstream/realtime/event_topic.lua",
      ["moonstream.realtime.listen"] = "lua/moonstream/realtime/listen.lua",
      ["moonstream.realtime.record_topic"] = "lua/moonstream/realtime/record_topic.lua",
      ["moonstream.realtime.rpc_topic"] = "lua/moonstream/realtime/rpc_topic.lua",
      ["moonstream.realtime.presence"] = "lua/moonstream/realtime/presence.lua",
   },
   install = {
      bin = { moonstream = "bin/moonstream" },
   },
}
