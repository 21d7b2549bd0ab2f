// RPC provider for bench/run's `rpcws` workload: the real @deepstream/client
// (binary transport, from the reference install) logs in and provides
// `add-two-ws` (numA + numB), so POST /api `make` requests travel HTTP ->
// server -> this WebSocket client -> server -> HTTP on moonstream and
// deepstream alike.
//   node bench/rpc-provider.js ws://127.0.0.1:PORT/deepstream
// Prints "ready" once providing, then serves until killed (or until the
// connection closes: exit 1).
'use strict'
const path = require('path')
const REF = path.join(__dirname, 'reference') // bench/reference/setup installs it
const { DeepstreamClient } = require(path.join(REF, 'node_modules', '@deepstream', 'client'))

const url = process.argv[2]
if (!url) {
  console.error('usage: node bench/rpc-provider.js WS_URL')
  process.exit(2)
}
const client = new DeepstreamClient(url, { maxReconnectAttempts: 0 })
client.on('error', (err, event) => console.error(`rpc-provider: ${event || ''} ${err}`))
const giveUp = setTimeout(() => { console.error('rpc-provider: no login within 20 s'); process.exit(1) }, 20000)
client.login({ username: 'bench-provider' }, (ok) => {
  if (!ok) { console.error('rpc-provider: login refused'); process.exit(1) }
  clearTimeout(giveUp)
  client.rpc.provide('add-two-ws', (data, response) => response.send(data.numA + data.numB))
  // the server acknowledges the provide; one round trip later it is registered
  client.event.subscribe('bench/provider-ready', () => {})
  setTimeout(() => console.log('ready'), 200)
})
client.on('connectionStateChanged', (state) => {
  if (state === 'CLOSED' || state === 'ERROR') { console.error(`rpc-provider: connection ${state}`); process.exit(1) }
})
