/* WebSocket connections (csrc/ws.c) as seen by the HTTP server (csrc/http.c).
 * http.c owns one hub per server: req:upgrade() turns a request into a
 * WebSocket through ms_ws_upgrade, and srv:close() closes every connection of
 * the hub (ms_ws_hub_close) before MHD_stop_daemon. Once MHD has sent the
 * 101, ws.c keeps a duplicate of the socket and hands MHD's connection back
 * at once, so MHD holds nothing of a live WebSocket. */
#ifndef MOONSTREAM_WS_H
#define MOONSTREAM_WS_H

#include <lua.h>
#include "loop.h"

struct MHD_Connection;
struct MHD_Response;
typedef struct ms_ws_hub ms_ws_hub;

/* Validates the handshake of conn and, when it is good, pushes a new
 * WebSocket userdata (state "connecting") and returns the 101 response to
 * queue (the caller owns it). On a bad handshake pushes nothing, sets *err to
 * a static message for a 400 answer and returns NULL. *hub is created on
 * first use. opts_idx: stack index of the options table or 0. May raise (Lua
 * context only: bad options, out of memory). */
struct MHD_Response *ms_ws_upgrade(lua_State *L, ms_loop *loop, ms_ws_hub **hub,
                                   struct MHD_Connection *conn, void *req_cls, int opts_idx,
                                   const char **err);

/* http.c calls this when a request that was answered with the upgrade
 * response is freed before MHD handed over the socket (inside MHD: no Lua). */
void ms_ws_abandon(void *ws);

/* Closes every connection of the hub (close frame 1001 sent best-effort,
 * on_close delivered), closes their sockets and frees the hub.
 * Lua context; never raises. Safe with hub == NULL. */
void ms_ws_hub_close(lua_State *L, ms_ws_hub *hub);

/* http.c's side of the hand-over: ms_http_upgraded, ms_http_forget_ws, ms_http_wake. */
#include "http.h"

#endif
