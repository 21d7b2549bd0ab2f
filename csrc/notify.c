/* systemd's readiness protocol (Type=notify): datagrams such as "READY=1"
 * to the socket named by $NOTIFY_SOCKET, sent with libsystemd's sd_notify
 * (which knows the abstract-namespace and credential details). Without
 * $NOTIFY_SOCKET it does nothing, so a server started by hand is unaffected. */
#include <string.h>
#include <systemd/sd-daemon.h>

#include "core.h"

/* core.notify(state) -> true (sent), false (no $NOTIFY_SOCKET) | nil, err */
static int notify_lua(lua_State *L) {
    const char *state = luaL_checkstring(L, 1);
    int rc = sd_notify(0, state);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "sd_notify: %s", strerror(-rc));
        return 2;
    }
    lua_pushboolean(L, rc > 0);
    return 1;
}

void ms_notify_open(lua_State *L) {
    lua_pushcfunction(L, notify_lua);
    lua_setfield(L, -2, "notify");
}
