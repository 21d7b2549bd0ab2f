/* libFuzzer target: whole HTTP requests through the real server stack.
 *
 * A moonstream server (lua/moonstream, its C core, LevelDB in a temporary
 * directory without sync) runs in this process. Each input is the byte
 * stream of one client connection: it is handed to libmicrohttpd through one
 * end of a socketpair (MHD_add_connection) and the loop runs until the
 * server closes the connection or a bounded number of turns pass. That
 * exercises MHD's parser, the glue in csrc/http.c (suspend/resume, body
 * limit), lua/moonstream/httpapi.lua, validation, dispatch and the JSON
 * codec on the same bytes. A "500" status (the server's own failure) or a
 * crash is a finding; MHD's own 4xx/505 answers are fine. http.c is included
 * to reach the daemon behind the Lua server object. */
#include "../csrc/http.c"
#include <fcntl.h>
#include <lualib.h>
#include <netinet/in.h>
#include <stdio.h>

int luaopen_moonstream_core(lua_State *L);
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static lua_State *FL;
/* LevelDB in memory when /dev/shm exists: tokens are written with sync, and
 * a disk sync per login would dominate the run. */
static char fuzz_dir[64];
static struct MHD_Daemon *fuzz_daemon;
static int step_ref;

static const char fuzz_setup[] =
    "local root, dir = ...\n"
    "package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path\n"
    "local moonstream = require 'moonstream'\n"
    "local server = assert(moonstream.new({ port = 0, logLevel = 'error', maxMessageSize = 65536,\n"
    "  requestTimeout = 1000, storage = { path = dir, sync = false } }))\n"
    "server:rpc('echo', function(data) return data end)\n"
    "server:rpc('fail', function() error('handler failed') end)\n"
    "server:on_event('chat', function() end)\n"
    "assert(server:listen())\n"
    "return function() server:step(0) end, server.http\n";

/* Removes the server's LevelDB directory when libFuzzer exits. */
static void fuzz_cleanup(void) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir);
    if (system(cmd) != 0) fprintf(stderr, "http_conn_fuzz: could not remove %s\n", fuzz_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *root = getenv("MS_ROOT");
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/moonstream-fuzz-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    char *dir = mkdtemp(fuzz_dir);
    if (dir == NULL) { perror("mkdtemp"); exit(1); }
    atexit(fuzz_cleanup);
    FL = luaL_newstate();
    luaL_openlibs(FL);
    luaL_requiref(FL, "moonstream.core", luaopen_moonstream_core, 0);
    lua_pop(FL, 1);
    if (luaL_loadstring(FL, fuzz_setup) != LUA_OK) { fprintf(stderr, "%s\n", lua_tostring(FL, -1)); exit(1); }
    lua_pushstring(FL, root ? root : ".");
    lua_pushfstring(FL, "%s/data", dir);
    if (lua_pcall(FL, 2, 2, 0) != LUA_OK) { fprintf(stderr, "setup: %s\n", lua_tostring(FL, -1)); exit(1); }
    http_server *srv = luaL_checkudata(FL, -1, SERVER_MT);
    fuzz_daemon = srv->daemon;
    lua_pop(FL, 1);
    step_ref = luaL_ref(FL, LUA_REGISTRYINDEX);
    fprintf(stderr, "http_conn_fuzz: server data in %s\n", dir);
    return 0;
}

static void fuzz_step(void) {
    lua_rawgeti(FL, LUA_REGISTRYINDEX, step_ref);
    if (lua_pcall(FL, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "http_conn_fuzz: server step raised: %s\n", lua_tostring(FL, -1));
        abort();
    }
}

/* Aborts on a status line "HTTP/1.x 500" anywhere in what the server sent. */
static void fuzz_check_answer(const char *buf, size_t len) {
    for (size_t i = 0; i + 12 <= len; i++) {
        if (memcmp(buf + i, "HTTP/1.", 7) == 0 && memcmp(buf + i + 8, " 500", 4) == 0) {
            fprintf(stderr, "http_conn_fuzz: the server answered 500:\n%.*s\n", (int)(len - i), buf + i);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
    struct sockaddr_in peer = { .sin_family = AF_INET, .sin_port = htons(40000),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (MHD_add_connection(fuzz_daemon, sv[0], (struct sockaddr *)&peer, sizeof peer) != MHD_YES) {
        close(sv[1]);
        return 0;
    }
    static char answer[1 << 16];
    size_t sent = 0, got = 0;
    int shut = 0;
    for (int turn = 0; turn < 400; turn++) {
        if (sent < size) {
            ssize_t w = write(sv[1], data + sent, size - sent);
            if (w > 0) sent += (size_t)w;
        }
        if (sent == size && !shut) { shutdown(sv[1], SHUT_WR); shut = 1; }
        fuzz_step();
        ssize_t r;
        while ((r = read(sv[1], answer + got, sizeof answer - 1 - got)) > 0) {
            got += (size_t)r;
            if (got == sizeof answer - 1) { fuzz_check_answer(answer, got); got = 0; }
        }
        if (r == 0) break;  /* the server closed the connection */
    }
    fuzz_check_answer(answer, got);
    close(sv[1]);
    for (int i = 0; i < 3; i++) fuzz_step();  /* lets MHD see the close and free it */
    return 0;
}
