// The client half of bench/cluster-latency (see there). Two modes:
//
//   node cluster-latency.js latency --a WS_URL_A --b WS_URL_B --samples N --rounds R
//     A subscriber on node A and one on node B, an emitter on node A (all
//     WebSocket, json transport). One emit at a time: each is timed from its
//     send to its arrival at both subscribers, so same-node and cross-node are
//     measured on the same emits, interleaved. Prints one JSON object: per
//     round and overall p50/p99 (ms) of both, and of cross minus same.
//
//   node cluster-latency.js load --api URL --workload read|write|emit --requests N --concurrency C
//     N POST /api requests of one command each, C in flight (keep-alive).
//     Prints { requests, seconds, failed }.
'use strict'
const http = require('http')
const path = require('path')
const WebSocket = require(path.join(__dirname, '..', 'spec', 'support', 'node', 'node_modules', 'ws'))

const args = { _: process.argv[2] }
for (let i = 3; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1]
const now = () => Number(process.hrtime.bigint()) / 1e6
const EVENT = 'bench/lat'

function pct (a, p) { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))] }
function round3 (x) { return Math.round(x * 1000) / 1000 }
function summary (a) { return { p50: round3(pct(a, 50)), p99: round3(pct(a, 99)) } }

// A logged-in client; onEmit(msg) for each event it receives. Resolves once
// subscribed (subscribe) or logged in.
function client (url, user, subscribe, onEmit) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false })
    const t = setTimeout(() => reject(new Error(`${user}: not ready within 20 s`)), 20000)
    ws.on('error', reject)
    ws.on('open', () => ws.send('{"topic":2,"action":5}'))
    ws.on('message', (raw) => {
      const m = JSON.parse(raw)
      if (m.topic === 4 && m.action === 2) return onEmit(m)
      if (m.topic === 2 && m.action === 4) return ws.send(JSON.stringify({ topic: 3, action: 2, parsedData: { username: user } }))
      if (m.topic === 3 && m.action === 3) {
        if (!subscribe) { clearTimeout(t); return resolve(ws) }
        return ws.send(JSON.stringify({ topic: 4, action: 3, names: [EVENT], correlationId: '0' }))
      }
      if (m.topic === 4 && m.action === 3) { clearTimeout(t); resolve(ws) }
    })
  })
}

async function latency () {
  const samples = Number(args.samples || 2000)
  const rounds = Number(args.rounds || 5)
  const sent = new Map()
  let waiting = null // { seq, same, cross, resolve }
  const arrival = (side) => (m) => {
    const seq = JSON.parse(m.data).seq
    if (!waiting || waiting.seq !== seq) return
    waiting[side] = now() - sent.get(seq)
    if (waiting.same !== undefined && waiting.cross !== undefined) waiting.resolve()
  }
  await client(args.a, 'same', true, arrival('same'))
  await client(args.b, 'cross', true, arrival('cross'))
  const emitter = await client(args.a, 'emitter', false, () => {})
  // the subscription on B must have reached Redis: emit until B hears one
  for (let seq = -1; ; seq--) {
    const got = new Promise((resolve) => { waiting = { seq, same: undefined, cross: undefined, resolve } })
    sent.set(seq, now())
    emitter.send(JSON.stringify({ topic: 4, action: 2, name: EVENT, data: JSON.stringify({ seq }) }))
    const ok = await Promise.race([got.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 1000))])
    if (ok) break
    if (seq < -30) throw new Error('node B never heard the emits')
  }
  const out = { samples, rounds, per_round: [] }
  const all = { same: [], cross: [], extra: [] }
  let seq = 0
  for (let r = 0; r < rounds; r++) {
    const one = { same: [], cross: [], extra: [] }
    for (let i = 0; i < samples / rounds; i++) {
      const s = ++seq
      const got = new Promise((resolve) => { waiting = { seq: s, same: undefined, cross: undefined, resolve } })
      sent.set(s, now())
      emitter.send(JSON.stringify({ topic: 4, action: 2, name: EVENT, data: JSON.stringify({ seq: s }) }))
      await got
      for (const k of ['same', 'cross']) { one[k].push(waiting[k]); all[k].push(waiting[k]) }
      one.extra.push(waiting.cross - waiting.same)
      all.extra.push(waiting.cross - waiting.same)
      sent.delete(s)
    }
    out.per_round.push({ same: summary(one.same), cross: summary(one.cross), cross_minus_same: summary(one.extra) })
  }
  out.same = summary(all.same)
  out.cross = summary(all.cross)
  out.cross_minus_same = summary(all.extra)
  console.log(JSON.stringify(out))
  process.exit(0)
}

const COMMANDS = {
  read: () => '{"topic":"record","action":"read","recordName":"bench/cost-read"}',
  write: (i) => `{"topic":"record","action":"write","recordName":"bench/cost-w${i % 1000}","version":-1,"data":{"n":${i},"text":"hello"}}`,
  emit: (i) => `{"topic":"event","action":"emit","eventName":"${EVENT}","data":{"seq":"load-${i}"}}`
}

async function load () {
  const n = Number(args.requests || 5000)
  const conc = Number(args.concurrency || 8)
  const make = COMMANDS[args.workload]
  if (!make) throw new Error(`unknown workload ${args.workload}`)
  const agent = new http.Agent({ keepAlive: true, maxSockets: conc })
  let next = 0
  let failed = 0
  const one = (i) => new Promise((resolve, reject) => {
    const body = `{"body":[${make(i)}]}`
    const req = http.request(args.api, { method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      res.on('end', () => { if (res.statusCode !== 200 || !text.includes('SUCCESS')) failed++; resolve() })
    })
    req.on('error', reject)
    req.end(body)
  })
  const t0 = now()
  await Promise.all(Array.from({ length: conc }, async () => { while (next < n) await one(next++) }))
  console.log(JSON.stringify({ requests: n, seconds: round3((now() - t0) / 1000), failed }))
  process.exit(0)
}

;(args._ === 'latency' ? latency() : load()).catch((e) => { console.error(e.stack || e); process.exit(1) })
