// Fan-out benchmark client: N WebSocket clients (json transport, raw frames
// with the `ws` package of the reference install) log in and subscribe to one
// event; HTTP emits (POST /api) are then delivered to all of them.
//   node fanout.js --ws URL --api URL --pid SERVER_PID [--clients 1000]
//        [--latency-emits 20] [--burst-emits 200] [--burst-concurrency 8] [--idle 5000]
// Prints one JSON object: deliveries/s, latency percentiles (ms, from sending
// the HTTP request to the frame's arrival), server RSS before/after.
'use strict'
const fs = require('fs')
const http = require('http')
const path = require('path')
const REF = path.join(__dirname, '..', 'reference') // bench/reference/setup installs it
const WebSocket = require(path.join(REF, 'node_modules', 'ws'))

const args = {}
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1]
const N = Number(args.clients || 1000)
const LAT = Number(args['latency-emits'] || 20)
const BURST = Number(args['burst-emits'] || 200)
const CONC = Number(args['burst-concurrency'] || 8)
const IDLE = Number(args.idle || 0)
const PID = Number(args.pid)
const EVENT = `fanout-${Math.random().toString(36).slice(2, 8)}`
const now = () => Number(process.hrtime.bigint()) / 1e6

function rssKb () {
  const s = fs.readFileSync(`/proc/${PID}/status`, 'utf8')
  return Number(s.match(/VmRSS:\s*(\d+)/)[1])
}

const sent = new Map() // seq -> send time
const counts = new Map() // seq -> deliveries
const latencies = []
let waiters = [] // { seq, resolve }
let lastArrival = 0

function onEmit (msg) {
  const t = now()
  let seq
  if (msg.parsedData && typeof msg.parsedData === 'object') seq = msg.parsedData.seq
  else seq = JSON.parse(msg.data).seq
  latencies.push(t - sent.get(seq))
  lastArrival = t
  const c = (counts.get(seq) || 0) + 1
  counts.set(seq, c)
  if (c === N) waiters = waiters.filter((w) => { if (w.seq === seq) { w.resolve(); return false } return true })
}

// Opens one client: challenge, login, optional subscribe. Resolves when ready.
function client (i, subscribe) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(args.ws, { perMessageDeflate: false })
    const t = setTimeout(() => reject(new Error(`client ${i}: no login within 20 s`)), 20000)
    ws.on('error', (e) => reject(e))
    ws.on('open', () => ws.send('{"topic":2,"action":5}'))
    ws.on('message', (raw) => {
      const m = JSON.parse(raw)
      if (m.topic === 4 && m.action === 2) return onEmit(m)
      if (m.topic === 2 && m.action === 4) return ws.send(JSON.stringify({ topic: 3, action: 2, parsedData: { username: `u${i}` }, data: JSON.stringify({ username: `u${i}` }) }))
      if (m.topic === 3 && m.action === 3) {
        if (!subscribe) { clearTimeout(t); return resolve(ws) }
        return ws.send(JSON.stringify({ topic: 4, action: 3, names: [EVENT], correlationId: '0' }))
      }
      if (m.topic === 4 && m.action === 3) { clearTimeout(t); resolve(ws) }
    })
  })
}

async function openMany (n, subscribe, offset) {
  const out = []
  for (let i = 0; i < n; i += 50) {
    const batch = []
    for (let j = i; j < Math.min(n, i + 50); j++) batch.push(client(offset + j, subscribe))
    out.push(...await Promise.all(batch))
  }
  return out
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CONC })
function emit (seq) {
  const body = JSON.stringify({ body: [{ topic: 'event', action: 'emit', eventName: EVENT, data: { seq } }] })
  return new Promise((resolve, reject) => {
    sent.set(seq, now())
    const req = http.request(args.api, { method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      res.on('end', () => (res.statusCode === 200 && text.includes('SUCCESS')) ? resolve() : reject(new Error(`emit ${seq}: ${res.statusCode} ${text}`)))
    })
    req.on('error', reject)
    req.end(body)
  })
}
const delivered = (seq) => new Promise((resolve) => { if (counts.get(seq) === N) resolve(); else waiters.push({ seq, resolve }) })
function withTimeout (p, ms, what) {
  let t
  return Promise.race([p, new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms) })]).finally(() => clearTimeout(t))
}
function pct (a, p) { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))] }

;(async () => {
  const result = { clients: N }
  result.rss_start_kb = rssKb()
  const socks = await openMany(N, true, 0)
  result.rss_subscribed_kb = rssKb()
  const ping = setInterval(() => { for (const s of socks) s.send('{"topic":2,"action":2}') }, 10000)
  // latency: one emit at a time, each delivered to all before the next
  let seq = 0
  for (let i = 0; i < LAT; i++) { const s = ++seq; await emit(s); await withTimeout(delivered(s), 30000, `emit ${s}`) }
  result.latency_p50_ms = pct(latencies, 50)
  result.latency_p99_ms = pct(latencies, 99)
  latencies.length = 0
  // throughput: BURST emits, CONC requests in flight
  const first = seq + 1
  const t0 = now()
  let next = first
  const lastSeq = seq + BURST
  await Promise.all(Array.from({ length: CONC }, async () => { while (next <= lastSeq) { const s = next++; await emit(s) } }))
  await withTimeout(Promise.all(Array.from({ length: BURST }, (_, k) => delivered(first + k))), 120000, 'burst')
  result.burst_deliveries = BURST * N
  result.burst_seconds = (lastArrival - t0) / 1000
  result.deliveries_per_s = Math.round(BURST * N / result.burst_seconds)
  result.burst_latency_p50_ms = pct(latencies, 50)
  result.burst_latency_p99_ms = pct(latencies, 99)
  // idle: more authenticated clients, no subscriptions
  if (IDLE > 0) {
    const before = rssKb()
    const idle = await openMany(IDLE, false, N)
    await new Promise((r) => setTimeout(r, 500))
    result.idle_clients = IDLE
    result.idle_rss_growth_kb = rssKb() - before
    result.idle_bytes_per_client = Math.round(result.idle_rss_growth_kb * 1024 / IDLE)
    for (const s of idle) s.terminate()
  }
  clearInterval(ping)
  for (const s of socks) s.terminate()
  console.log(JSON.stringify(result))
  process.exit(0)
})().catch((e) => { console.error(e.stack || e); process.exit(1) })
