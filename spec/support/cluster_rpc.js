// The real @deepstream/client 7.0.5 on two cluster nodes (spec/87):
//   node spec/support/cluster_rpc.js PORT_A PORT_C
// ann on node A provides "s87/real"; once
// the spec saw it in Redis (a line on stdin), bob on node C makes it twice:
// one answered, one that the provider fails. Prints one JSON line of what
// bob got (or {"error": ...}) and exits; everything is bounded by a deadline.
const path = require('path')
const { DeepstreamClient } = require(path.join(__dirname, 'node', 'node_modules', '@deepstream/client'))

const [portA, portC] = process.argv.slice(2)
const done = (out) => { console.log(JSON.stringify(out)); process.exit(0) }
setTimeout(() => done({ error: 'deadline' }), 15000)

function client (port) {
  return new DeepstreamClient(`ws://127.0.0.1:${port}/deepstream`, { offlineEnabled: false })
}

function make (c, name, data) {
  return new Promise((resolve) => c.rpc.make(name, data, (err, result) => resolve({ err, result })))
}

async function main () {
  const ann = client(portA)
  await ann.login({ username: 'ann' })
  let seen = 0
  ann.rpc.provide('s87/real', (data, response) => {
    seen++
    if (data.fail) return response.error('no ' + data.n)
    response.send({ sum: data.n + 1, by: 'ann' })
  })
  await ann.presence.getAll() // the PROVIDE reached node A (its answers come in order)
  process.stdout.write('ready\n')
  await new Promise((resolve) => process.stdin.once('data', resolve))
  const bob = client(portC)
  await bob.login({ username: 'bob' })
  const ok = await make(bob, 's87/real', { n: 41 })
  const failed = await make(bob, 's87/real', { n: 1, fail: true })
  done({ ok, failed, seen })
}

main().catch((e) => done({ error: String(e) }))
