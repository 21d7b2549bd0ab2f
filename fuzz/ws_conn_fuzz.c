/* libFuzzer target: WebSocket sessions through the real server stack.
 *
 * The same driver as http_conn_fuzz.c (one in-process server, each input the
 * byte stream of one connection), with its own seed corpus and dictionary:
 * an RFC 6455 upgrade to /deepstream or /deepstream-json followed by client
 * frames (mask key 0, so the payload stays readable to the mutator) taken
 * from spec/fixtures/realtime-vectors. That reaches the framing, csrc/ws.c
 * (handshake checks, UTF-8 checks, message size limit, close codes) and the
 * realtime Lua layer with its JSON and binary codecs. */
#include "http_conn_fuzz.c"
