// Two real @deepstream/client 7.0.5 clients on two cluster nodes (spec/86):
//   node spec/support/cluster_clients.js PORT_A PORT_B
// ann on node A subscribes to a record, an event and presence; bob on node B
// logs in, sets the record and emits. Prints one JSON line of what ann saw
// (or {"error": ...}) and exits; everything is bounded by a deadline.
const path = require('path')
const { DeepstreamClient } = require(path.join(__dirname, 'node', 'node_modules', '@deepstream/client'))

const [portA, portB] = process.argv.slice(2)
const seen = { record: [], events: [], presence: [] }
const done = (out) => { console.log(JSON.stringify(out)); process.exit(0) }
setTimeout(() => done({ error: 'deadline', seen }), 15000)

function client (port) {
  return new DeepstreamClient(`ws://127.0.0.1:${port}/deepstream`, { offlineEnabled: false })
}

async function main () {
  const ann = client(portA)
  await ann.login({ username: 'ann' })
  ann.presence.subscribe((user, online) => { seen.presence.push([user, online]); check() })
  ann.event.subscribe('s86/e', (data) => { seen.events.push(data); check() })
  const rec = ann.record.getRecord('s86/r')
  await rec.whenReady()
  rec.subscribe((data) => {
    seen.record.push(data)
    check()
  })
  // the subscriptions reached node A (its answers come in order after them)
  await ann.presence.getAll()
  process.stdout.write('ready\n')
  await new Promise((resolve) => process.stdin.once('data', resolve)) // the spec saw node A subscribe in Redis
  const bob = client(portB)
  await bob.login({ username: 'bob' })
  await bob.record.setData('s86/r', { by: 'bob', n: 1 })
  bob.event.emit('s86/e', { from: 'bob' })
  const bobSees = await bob.presence.getAll()
  seen.bobSeesAnn = bobSees.includes('ann')
  check()
}

let finishing = false
function check () {
  if (!finishing && seen.record.some((d) => d.by === 'bob') && seen.events.length > 0 &&
        seen.presence.some(([u, o]) => u === 'bob' && o) && seen.bobSeesAnn !== undefined) {
    finishing = true
    setTimeout(() => done(seen), 300) // anything arriving twice would arrive in this time
  }
}

main().catch((e) => done({ error: String(e), seen }))
