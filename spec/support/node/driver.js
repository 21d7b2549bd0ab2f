// Drives real @deepstream/client instances for the realtime specs
// (spec/support/rt_driver.lua) and tests/realtime_compare.lua.
//
//   node driver.js CONTROL_PORT
//
// It connects to 127.0.0.1:CONTROL_PORT and reads one JSON command per line:
// {"id":N,"op":"...",...}. Each command is answered with {"id":N,"result":...}
// or {"id":N,"error":"..."}. Everything the clients observe is reported as it
// happens, one JSON line each, {"ev":"...","c":client,...}:
//   frame     {dir:">"|"<", msg}  every protocol message a client sends or
//             receives (decoded, names for topic and action): the specs wait
//             for acknowledgements with these, never with sleeps
//   state     {state}             connection state changes (OPEN, RECONNECTING, ...)
//   error     {event, topic}      the client's error events
//   record    {name, data}        a held record changed
//   deleted   {name}              a held record was deleted
//   provider  {name, has}         record.hasProvider changed
//   event     {name, data}        an event arrived
//   found     {topic, pattern, sub} / stop {topic, sub}   listen callbacks
//   rpc       {name, data}        a provided RPC was called (answered with {by, data})
//   presence  {user, online}
'use strict'
const net = require('net')
const { DeepstreamClient } = require('@deepstream/client')
const { socketFactory } = require('@deepstream/client/dist/src/connection/socket-factory')
const { LOCAL_WINS, REMOTE_WINS } = require('@deepstream/client/dist/src/record/merge-strategy')
const P = require('@deepstream/protobuf/dist/types/all')

const ACTIONS = {
  [P.TOPIC.PARSER]: P.PARSER_ACTION, [P.TOPIC.CONNECTION]: P.CONNECTION_ACTION, [P.TOPIC.AUTH]: P.AUTH_ACTION,
  [P.TOPIC.EVENT]: P.EVENT_ACTION, [P.TOPIC.RECORD]: P.RECORD_ACTION, [P.TOPIC.RPC]: P.RPC_ACTION,
  [P.TOPIC.PRESENCE]: P.PRESENCE_ACTION,
}

const sock = net.connect(Number(process.argv[2]), '127.0.0.1')
sock.setEncoding('utf8')
const out = (obj) => sock.write(JSON.stringify(obj) + '\n')
const clients = new Map()   // name -> { client, records: Map, responses: Map, proxy }

// A TCP relay between one client and the server: cutting it drops the
// client's connection and refuses its reconnection attempts until it is
// restored, which is how a network outage looks to both ends.
function relay (host, port) {
  const p = { up: true, pairs: new Set() }
  p.server = net.createServer((down) => {
    if (!p.up) { down.destroy(); return }
    const up = net.connect(port, host)
    const pair = [down, up]
    p.pairs.add(pair)
    const end = () => { down.destroy(); up.destroy(); p.pairs.delete(pair) }
    down.on('error', end); up.on('error', end); down.on('close', end); up.on('close', end)
    down.pipe(up); up.pipe(down)
  })
  p.cut = () => { p.up = false; for (const [down, up] of p.pairs) { down.destroy(); up.destroy() } p.pairs.clear() }
  return new Promise((resolve) => p.server.listen(0, '127.0.0.1', () => { p.port = p.server.address().port; resolve(p) }))
}

// A protocol message as both transports decode it, made comparable: topic and
// action names, the payload as a value, empty and default fields left out.
function normalise (m) {
  const acts = ACTIONS[m.topic] || {}
  const r = { topic: P.TOPIC[m.topic] || m.topic, action: acts[m.action] !== undefined ? acts[m.action] : m.action }
  for (const [k, v] of Object.entries(m)) {
    if (k === 'topic' || k === 'action' || k === 'data' || k === 'parsedData' || v === undefined) continue
    if ((k === 'isAck' || k === 'isError' || k === 'isWriteAck') && v === false) continue
    if (k === 'names' && Array.isArray(v) && v.length === 0) continue
    if (k === 'versions' && Object.keys(v).length === 0 && m.action !== P.RECORD_ACTION.HEAD_RESPONSE_BULK) continue
    if (k === 'originalAction') { r[k] = acts[v] !== undefined ? acts[v] : v; continue }
    r[k] = v
  }
  let value = m.parsedData
  if (value === undefined && typeof m.data === 'string' && m.data !== '') {
    try { value = JSON.parse(m.data) } catch (e) { value = m.data }
  }
  if (value !== undefined) r.data = value
  return r
}

// The client's own socket factory, with every message reported.
function tracingFactory (c) {
  return (url, options, heartbeat) => {
    const s = socketFactory(url, options, heartbeat)
    const send = s.sendParsedMessage
    s.sendParsedMessage = (m) => {
      if (!(m.topic === P.TOPIC.CONNECTION && (m.action === P.CONNECTION_ACTION.PING || m.action === P.CONNECTION_ACTION.CLOSING))) {
        out({ ev: 'frame', c, dir: '>', msg: normalise(m) })
      }
      send(m)
    }
    let handler = null
    Object.defineProperty(s, 'onparsedmessages', {
      set (h) { handler = h },
      get () {
        return (msgs) => {
          for (const m of msgs) {
            if (!(m.topic === P.TOPIC.CONNECTION && m.action === P.CONNECTION_ACTION.PONG)) out({ ev: 'frame', c, dir: '<', msg: normalise(m) })
          }
          handler(msgs)
        }
      }
    })
    return s
  }
}

function entry (c) {
  const e = clients.get(c)
  if (!e) throw new Error('no client ' + c)
  return e
}

function record (cmd) {
  const e = entry(cmd.c)
  const r = e.records.get(cmd.name)
  if (!r) throw new Error('client ' + cmd.c + ' holds no record ' + cmd.name)
  return r
}

function listen (cmd, topic) {
  const e = entry(cmd.c)
  e.client[topic].listen(cmd.pattern, (sub, response) => {
    out({ ev: 'found', c: cmd.c, topic, pattern: cmd.pattern, sub })
    response.onStop(() => out({ ev: 'stop', c: cmd.c, topic, sub }))
    if (cmd.mode === 'accept') response.accept()
    else if (cmd.mode === 'reject') response.reject()
    else e.responses.set(topic + ' ' + sub, response) // answered later (listen.respond) or never
  })
  return null
}

const ops = {
  async connect (cmd) {
    const options = Object.assign({
      subscriptionInterval: 20, reconnectIntervalIncrement: 100, maxReconnectInterval: 300,
      maxReconnectAttempts: 1000, socketFactory: tracingFactory(cmd.c),
    }, cmd.options || {})
    if (cmd.json) options.socketOptions = { jsonTransportMode: true }
    let url = cmd.url
    let proxy = null
    if (cmd.relay) {
      const u = new URL(url)
      proxy = await relay(u.hostname, Number(u.port))
      u.port = String(proxy.port)
      url = u.toString()
    }
    const client = new DeepstreamClient(url, options)
    clients.set(cmd.c, { client, records: new Map(), responses: new Map(), proxy })
    client.on('error', (error, event, topic) => out({ ev: 'error', c: cmd.c, event, topic }))
    client.on('connectionStateChanged', (state) => out({ ev: 'state', c: cmd.c, state }))
    if (cmd.nologin) return null
    return client.login(cmd.auth || { username: cmd.user || cmd.c })
  },
  async login (cmd) {
    try { return { ok: true, data: await entry(cmd.c).client.login(cmd.auth) } } catch (e) { return { ok: false, reason: e } }
  },
  close (cmd) {
    const e = entry(cmd.c)
    e.client.close()
    if (e.proxy) { e.proxy.cut(); e.proxy.server.close() }
    clients.delete(cmd.c)
    return null
  },
  'relay.cut' (cmd) { entry(cmd.c).proxy.cut(); return null },
  'relay.restore' (cmd) { entry(cmd.c).proxy.up = true; return null },
  async 'record.get' (cmd) {
    const e = entry(cmd.c)
    const r = e.client.record.getRecord(cmd.name)
    e.records.set(cmd.name, r)
    if (cmd.merge) r.setMergeStrategy(cmd.merge === 'LOCAL_WINS' ? LOCAL_WINS : REMOTE_WINS)
    r.subscribe((data) => out({ ev: 'record', c: cmd.c, name: cmd.name, data }))
    r.on('delete', () => out({ ev: 'deleted', c: cmd.c, name: cmd.name }))
    // the Record wrapper does not pass this one on: listen on its core
    r.record.on('hasProviderChanged', (has) => out({ ev: 'provider', c: cmd.c, name: cmd.name, has }))
    await r.whenReady()
    return { version: r.version, data: r.get() }
  },
  'record.state' (cmd) {
    const r = record(cmd)
    return { version: r.version, data: r.get(), ready: r.isReady, hasProvider: r.hasProvider }
  },
  async 'record.set' (cmd) {
    const r = record(cmd)
    const args = cmd.path !== undefined ? [cmd.path, cmd.data] : [cmd.data]
    if (cmd.ack) { await r.setWithAck(...args); return null }
    r.set(...args)
    return null
  },
  'record.discard' (cmd) { record(cmd).discard(); entry(cmd.c).records.delete(cmd.name); return null },
  async 'record.delete' (cmd) { await record(cmd).delete(); entry(cmd.c).records.delete(cmd.name); return null },
  async 'record.snapshot' (cmd) { return entry(cmd.c).client.record.snapshot(cmd.name) },
  async 'record.head' (cmd) { return entry(cmd.c).client.record.head(cmd.name) },
  async 'record.has' (cmd) { return entry(cmd.c).client.record.has(cmd.name) },
  async 'record.setData' (cmd) {
    const handler = entry(cmd.c).client.record
    const args = 'path' in cmd ? [cmd.name, cmd.path, cmd.data] : [cmd.name, cmd.data]
    try { await handler.setDataWithAck(...args); return { ok: true } } catch (e) { return { ok: false, reason: String(e) } }
  },
  async 'record.notify' (cmd) { await entry(cmd.c).client.record.notify(cmd.names); return null },
  'record.listen' (cmd) { return listen(cmd, 'record') },
  'event.listen' (cmd) { return listen(cmd, 'event') },
  'record.unlisten' (cmd) { entry(cmd.c).client.record.unlisten(cmd.pattern); return null },
  'event.unlisten' (cmd) { entry(cmd.c).client.event.unlisten(cmd.pattern); return null },
  'listen.respond' (cmd) {
    const e = entry(cmd.c)
    const key = cmd.topic + ' ' + cmd.sub
    const response = e.responses.get(key)
    if (!response) throw new Error('no pending listen response ' + key)
    e.responses.delete(key)
    if (cmd.accept) response.accept(); else response.reject()
    return null
  },
  'event.subscribe' (cmd) {
    entry(cmd.c).client.event.subscribe(cmd.name, (data) => out({ ev: 'event', c: cmd.c, name: cmd.name, data }))
    return null
  },
  'event.unsubscribe' (cmd) { entry(cmd.c).client.event.unsubscribe(cmd.name); return null },
  'event.emit' (cmd) { entry(cmd.c).client.event.emit(cmd.name, cmd.data); return null },
  'rpc.provide' (cmd) {
    entry(cmd.c).client.rpc.provide(cmd.name, (data, response) => {
      out({ ev: 'rpc', c: cmd.c, name: cmd.name, data })
      response.send({ by: cmd.c, data })
    })
    return null
  },
  async 'rpc.make' (cmd) { return entry(cmd.c).client.rpc.make(cmd.name, cmd.data) },
  'presence.subscribe' (cmd) {
    entry(cmd.c).client.presence.subscribe((user, online) => out({ ev: 'presence', c: cmd.c, user, online }))
    return null
  },
  async 'presence.getAll' (cmd) {
    const presence = entry(cmd.c).client.presence
    return cmd.names ? presence.getAll(cmd.names) : presence.getAll()
  },
  exit () { setImmediate(() => process.exit(0)); return null },
}

async function run (cmd) {
  try {
    const op = ops[cmd.op]
    if (!op) throw new Error('unknown op ' + cmd.op)
    const result = await op(cmd)
    out({ id: cmd.id, result: result === undefined ? null : result })
  } catch (e) {
    out({ id: cmd.id, error: typeof e === 'string' ? e : (e && e.message) || String(e) })
  }
}

let buffer = ''
sock.on('data', (chunk) => {
  buffer += chunk
  let i
  while ((i = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, i)
    buffer = buffer.slice(i + 1)
    if (line) run(JSON.parse(line))
  }
})
sock.on('close', () => process.exit(0))
sock.on('error', () => process.exit(1))
// the control socket is the only reason to live: a stuck spec cannot leave it behind
setTimeout(() => process.exit(2), Number(process.env.DRIVER_LIFETIME_MS || 300000)).unref()
