// Differential test of Valve permissions: the same requests, in the same order, to the
// deepstream reference server and to moonstream, both started from tests/valve-diff/conf/.
// Each request's allow/deny decision is recorded for both; every pair must be equal.
//
//   node diff.js --ref http://127.0.0.1:P1 --ms http://127.0.0.1:P2 --log FILE
//
// Requests: POST /api commands (authData inline) and real @deepstream/client actions, for the
// users of conf/users.yml and an anonymous one. A decision is read from a real signal each
// time: the HTTP answer, a promise of the client, or, for actions the client does not answer
// (emit, subscribe, provide, listen), whichever comes first of the denial (an error event) and
// the action's effect (the event arrives, the provider is called), with a 10 s deadline.
'use strict'
const fs = require('fs')
const { DeepstreamClient } = require('@deepstream/client')

const args = {}
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1]
const DEADLINE = 10000

const USERS = {
  admin: { username: 'admin', password: 'adminpw' },
  ann: { username: 'ann', password: 'annpw' },
  bob: { username: 'bob', password: 'bobpw' },
  eve: { username: 'eve', password: 'evepw' },
  anon: {},
}
const TRANSPORT = { admin: 'json', ann: 'binary', bob: 'json', eve: 'binary', anon: 'json' }

// The cases, in order; seeds are cases too (their decisions are compared like the others).
const R = (recordName, data, extra) => ({ topic: 'record', action: 'write', recordName, data, ...extra })
const cases = []
const http = (user, cmd) => cases.push({ kind: 'http', user, cmd })
const rt = (user, op, a) => cases.push({ kind: 'rt', user, op, ...a })

// seeds (admin, then owners)
http('admin', R('teams/blue', { members: ['ann'] }))
http('admin', R('teams/red', { members: ['bob'] }))
http('admin', R('docs-index/d1', { ref: 'docs-content/d1' }))
http('admin', R('docs-content/d1', { public: true }))
http('admin', R('docs-index/d2', { ref: 'docs-content/d2' }))
http('admin', R('docs-content/d2', { public: false }))
http('admin', R('docs-index/d3', { ref: 'docs-content/none' }))
http('admin', R('acl/a1', { editors: ['ann', 'bob'] }))
http('admin', R('topics/general', { open: true }))
http('admin', R('topics/closed', { open: false }))
http('admin', R('deep-a/x', { next: 'deep-b/x' }))
http('admin', R('deep-b/x', { next: 'deep-c/x' }))
http('admin', R('deep-c/x', { ok: true }))
http('admin', R('deep-a/y', { next: 'deep-b/y' }))
http('admin', R('deep-b/y', { next: 'deep-c/y' }))
http('admin', R('deep-c/y', { ok: false }))
http('admin', R('secret/s1', { v: 1 }))
http('admin', R('plain/p1', { v: 1 }))

// records over HTTP
for (const u of ['ann', 'bob', 'eve', 'anon', 'admin']) {
  http(u, R('public/' + u, { by: u }))
  http(u, { topic: 'record', action: 'read', recordName: 'public/ann' })
  http(u, { topic: 'record', action: 'read', recordName: 'secret/s1' })
  http(u, { topic: 'record', action: 'head', recordName: 'secret/s1' })
  http(u, R('secret/' + u, { v: 1 }))
  http(u, R('plain/p1', { v: 2 }))
  http(u, { topic: 'record', action: 'read', recordName: 'plain/p1' })
  http(u, R('users/' + u, { owner: u }))
  http(u, R('users/ann', { owner: u, x: 1 }))
  http(u, { topic: 'record', action: 'read', recordName: 'users/ann' })
  http(u, { topic: 'record', action: 'read', recordName: 'users/bob' })
  http(u, R('profiles/' + u, { age: 30 }))
  http(u, R('profiles/' + u, { age: 29 }))
  http(u, R('profiles/' + u, { age: 31 }))
  http(u, R('profiles/' + u, { age: '40' }))
  http(u, R('profiles/' + u, 32, { path: 'age' }))
  http(u, R('profiles/' + u, 5, { path: 'age' }))
  http(u, R('posts/p-' + u, { author: u, title: 'Hello ' + u, draft: true }))
  http(u, R('posts/p-' + u, { author: u, title: '   ' }))
  http(u, R('posts/p-' + u, { author: u, title: 'x'.repeat(21) }))
  http(u, R('posts/p-ann', { author: u, title: 'Taken' }))
  http(u, { topic: 'record', action: 'read', recordName: 'posts/p-ann' })
  http(u, { topic: 'record', action: 'head', recordName: 'posts/p-bob' })
  http(u, R('teams/blue/doc1', { t: u }))
  http(u, R('teams/red/doc1', { t: u }))
  http(u, R('teams/blue/memo', { t: u }))
  http(u, R('teams/green/doc1', { t: u }))
  http(u, { topic: 'record', action: 'read', recordName: 'teams/blue/doc1' })
  http(u, { topic: 'record', action: 'read', recordName: 'teams/red/doc1' })
  http(u, R('docs/a1', { by: u }))
  http(u, R('docs/a2', { by: u }))
  http(u, { topic: 'record', action: 'read', recordName: 'docs/d1' })
  http(u, { topic: 'record', action: 'read', recordName: 'docs/d2' })
  http(u, { topic: 'record', action: 'read', recordName: 'docs/d3' })
  http(u, { topic: 'record', action: 'read', recordName: 'docs/d4' })
  http(u, { topic: 'record', action: 'read', recordName: 'deep/x' })
  http(u, { topic: 'record', action: 'read', recordName: 'deep/y' })
  http(u, R('deep/x', { by: u }))
  http(u, R('deep/z', { by: u }))
  http(u, { topic: 'record', action: 'read', recordName: 'xref/q' })
  http(u, R('xref/q', { target: 'topics/general' }))
  http(u, R('xref/q', { target: 'topics/none' }))
  http(u, R('xref/q', { target: 5 }))
  http(u, R('xref/q', { nothing: true }))
  http(u, { topic: 'record', action: 'delete', recordName: 'posts/p-bob' })
  http(u, { topic: 'record', action: 'delete', recordName: 'public/' + u })
  http(u, { topic: 'list', action: 'write', listName: 'public/list-' + u, data: ['a', 'b'] })
  http(u, { topic: 'list', action: 'read', listName: 'secret/s1' })
}
// names, string methods
for (const n of ['names/abc', 'names/a.txt', 'names/a..b', 'names/xyz', 'names/ABC', 'names/abc/def']) {
  http('ann', R(n, { v: 1 }))
  http('bob', { topic: 'record', action: 'read', recordName: n })
}
http('admin', R('names/upper', { v: 1 }))
http('ann', { topic: 'record', action: 'delete', recordName: 'names/upper' })
http('ann', { topic: 'record', action: 'delete', recordName: 'names/abc' })
// truthiness: the rule compares (data.v ? true : false) with data.expect
const truthy = [[0, 'falsy'], ['', 'falsy'], [null, 'falsy'], [false, 'falsy'], ['0', 'truthy'], [' ', 'truthy'],
  [[], 'truthy'], [{}, 'truthy'], [-1, 'truthy'], [0.5, 'truthy'], ['false', 'truthy'], [0, 'truthy'], ['x', 'falsy']]
truthy.forEach(([v, expect], i) => http('bob', R('truthy/t' + i, { v, expect })))
http('bob', R('truthy/missing', { expect: 'falsy' }))
// == and ===
const loose = [[1, '1', false], [1, 1, true], [0, '', false], [null, null, true], [false, '0', false], [true, 1, false],
  ['a', 'a', true], [[1], '1', false], ['1e3', 1000, false], [null, 0, false], ['', ' ', false], [{}, '[object Object]', false]]
loose.forEach(([a, b, strict], i) => http('ann', R('loose/l' + i, { a, b, strict })))
http('ann', R('loose/undef', { a: null, strict: false }))
// typeof
const types = [[1, 'number'], ['s', 'string'], [true, 'boolean'], [null, 'object'], [[], 'object'], [{}, 'object'], [1, 'string']]
types.forEach(([v, t], i) => http('ann', R('types/k' + i, { v, t })))
http('ann', R('types/none', { t: 'undefined' }))
// arithmetic and string +
http('ann', R('math/m1', { a: 1, b: 2, sum: 3, s: 'n1' }))
http('ann', R('math/m2', { a: 2, b: 2, sum: 4, s: 'n2' }))
http('ann', R('math/m3', { a: 4, b: 0.5, sum: 4.5, s: 'n4' }))
http('ann', R('math/m4', { a: '1', b: 2, sum: '12', s: 'n1' }))
http('ann', R('math/m5', { a: 0.1, b: 0.2, sum: 0.3, s: 'n0.1' }))
http('ann', R('math/m6', { a: 7, b: 1, sum: 8, s: 'n7' }))
http('ann', R('math/m7', { a: 1e21, b: 0, sum: 1e21, s: 'n1e+21' }))
http('ann', R('time/t1', { at: 1000 }))
http('ann', R('time/t2', { at: 99999999999999 }))
// events over HTTP
for (const u of ['ann', 'bob', 'eve', 'anon', 'admin']) {
  const emit = (eventName, data) => http(u, { topic: 'event', action: 'emit', eventName, data })
  // (deepstream 7.0.2 gives publish rules `data` undefined for HTTP emits, so it refuses every HTTP emit
  // whose rule needs the data; moonstream gives the rule the data: no allowed-by-data HTTP emit here)
  emit('chat/lobby', { text: 'buy SPAM now' })
  emit('chat/lobby', { text: 5 })
  emit('chat/lobby', 'just text')
  emit('chat/lobby', { text: 'x'.repeat(50) })
  emit('scores/game', 0)
  emit('scores/game', 101)
  emit('scores/game', '50')
  // (no HTTP emits under news/: a cross-reference in a rule for an HTTP emit stops deepstream 7.0.2;
  // the realtime emits below cover that rule)
  emit('vip-lounge', { t: 1 })
  emit('anything', { t: 1 })
  // rpc
  const make = (rpcName, data) => http(u, { topic: 'rpc', action: 'make', rpcName, data })
  make('calc/add', { a: 1 })
  make('calc/mul', { a: 1 })
  make('calc/add', { a: '1' })
  make('private-thing', {})
  make('free', {})
  // presence
  http(u, { topic: 'presence', action: 'query' })
  http(u, { topic: 'presence', action: 'query', names: ['ann', 'bob'] })
}

// realtime actions (real clients)
for (const u of ['ann', 'bob', 'eve', 'anon']) {
  rt(u, 'get', { name: 'public/rt-' + u })
  rt(u, 'get', { name: 'secret/s1' })
  rt(u, 'get', { name: 'users/' + u })
  rt(u, 'get', { name: 'users/ann' })
  rt(u, 'get', { name: 'posts/p-ann' })
  rt(u, 'get', { name: 'teams/blue/doc1' })
  rt(u, 'get', { name: 'docs/d1' })
  rt(u, 'get', { name: 'docs/d2' })
  rt(u, 'get', { name: 'deep/y' })
  rt(u, 'set', { name: 'profiles/' + u, data: { age: 50 } })
  rt(u, 'set', { name: 'profiles/' + u, path: 'age', data: 49 })
  rt(u, 'set', { name: 'profiles/' + u, path: 'age', data: 51 })
  rt(u, 'set', { name: 'profiles/rt-none-' + u, path: 'age', data: 1 })
  rt(u, 'set', { name: 'teams/red/doc-rt', data: { by: u } })
  rt(u, 'set', { name: 'plain/p1', data: { v: 3 } })
  // (the client never answers a snapshot of a record it was refused a subscription to: other names)
  rt(u, 'snapshot', { name: 'secret/snap' })
  rt(u, 'snapshot', { name: 'docs/d3' })
  rt(u, 'snapshot', { name: 'names/abc' })
  rt(u, 'snapshot', { name: 'names/ABC' })
  rt(u, 'head', { name: 'posts/p-bob' })
  rt(u, 'has', { name: 'secret/has' })
  rt(u, 'emit', { name: 'chat/lobby', data: { text: 'hi from ' + u } })
  rt(u, 'emit', { name: 'chat/lobby', data: { text: 'SPAM' } })
  rt(u, 'emit', { name: 'scores/rt', data: 77 })
  rt(u, 'emit', { name: 'vip-room', data: { x: 1 } })
  rt(u, 'emit', { name: 'news/general', data: { x: 1 } })
  rt(u, 'emit', { name: 'news/closed', data: { x: 1 } })
  rt(u, 'subscribe', { name: 'chat/secret' })
  rt(u, 'subscribe', { name: 'chat/open' })
  rt(u, 'subscribe', { name: 'vip-room' })
  rt(u, 'subscribe', { name: 'news/x' })
  rt(u, 'make', { name: 'calc/add', data: { a: 2 } })
  rt(u, 'make', { name: 'calc/div', data: { a: 2 } })
  rt(u, 'make', { name: 'private-x', data: {} })
  rt(u, 'provide', { name: 'calc/mul' })
  rt(u, 'provide', { name: 'other-rpc' })
  rt(u, 'presence', {})
  rt(u, 'presence', { names: ['ann'] })
  rt(u, 'listen', { pattern: 'vip-.*', sample: 'vip-listened' })
  rt(u, 'listen', { pattern: 'chat/.*', sample: 'chat/listened' })
}

// Running ------------------------------------------------------------------------------------

function once (fn) { let done = false; return (...a) => { if (!done) { done = true; fn(...a) } } }
function denial (e) {
  const s = String(e && (e.message || e.event || e) || e)
  return /MESSAGE_DENIED|MESSAGE_PERMISSION_ERROR/.test(s)
}

async function post (base, user, cmd) {
  const res = await fetch(base + '/api', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ authData: USERS[user], body: [cmd] }),
  })
  const text = await res.text()
  let j
  try { j = JSON.parse(text) } catch (e) { return { decision: 'error', detail: `HTTP ${res.status} ${text.slice(0, 80)}` } }
  const r = j.body && j.body[0]
  if (!r) return { decision: 'error', detail: `HTTP ${res.status} ${text.slice(0, 80)}` }
  if (r.success) return { decision: 'allow', detail: 'success' }
  // deepstream 7.0.2 answers some denials with the action's number: record 115/114, event 104/103,
  // rpc 107/106, presence 102/101 (MESSAGE_DENIED / MESSAGE_PERMISSION_ERROR)
  const numbered = { record: ['115', '114'], list: ['115', '114'], event: ['104', '103'], rpc: ['107', '106'],
    presence: ['102', '101'] }[cmd.topic] || []
  if (r.errorEvent === 'MESSAGE_DENIED' || r.errorEvent === 'MESSAGE_PERMISSION_ERROR' ||
    numbered.includes(String(r.errorEvent))) {
    return { decision: 'deny', detail: r.errorEvent }
  }
  return { decision: 'allow', detail: r.errorEvent || r.error }
}

class Server {
  constructor (base) {
    this.base = base
    this.clients = {}
  }

  async client (user) {
    if (this.clients[user]) return this.clients[user]
    const path = TRANSPORT[user] === 'json' ? '/deepstream-json' : '/deepstream'
    const options = { offlineEnabled: false, maxReconnectAttempts: 0, subscriptionTimeout: 3000 }
    if (TRANSPORT[user] === 'json') options.socketOptions = { jsonTransportMode: true }
    const c = new DeepstreamClient(this.base.replace(/^http/, 'ws') + path, options)
    c.errors = []
    c.waiters = []
    c.on('error', (err, event, topic) => {
      // err: the name for most denials, the whole message for a refused record subscription
      // (an event denial's message carries no name: '' matches the action being waited for)
      const text = err && typeof err === 'object' ? String(err.name !== undefined ? err.name : '') : String(err)
      const e = { err: text, event: String(event), topic: String(topic) }
      c.errors.push(e)
      c.waiters.forEach((w) => w(e))
    })
    await c.login(USERS[user])
    this.clients[user] = c
    return c
  }

  // Resolves 'deny' at the first permission error event on c naming `name`, 'allow' when
  // setup's allow() is called (the action's effect was seen), 'timeout' after DEADLINE ms.
  race (c, name, setup) {
    return new Promise((resolve) => {
      const finish = once((decision, detail) => {
        clearTimeout(timer)
        c.waiters = c.waiters.filter((w) => w !== waiter)
        resolve({ decision, detail })
      })
      const waiter = (e) => {
        if (denial(e.event) && (name === undefined || e.err === '' || e.err.includes(name))) finish('deny', e.event)
      }
      c.waiters.push(waiter)
      const timer = setTimeout(() => finish('timeout', 'no signal within ' + DEADLINE + ' ms'), DEADLINE)
      setup((detail) => finish('allow', detail), (detail) => finish('deny', detail))
    })
  }

  async rt (cs) {
    const c = await this.client(cs.user)
    const admin = await this.client('admin')
    switch (cs.op) {
      case 'get':
      {
        let rec
        const r = await this.race(c, cs.name, (allow) => {
          rec = c.record.getRecord(cs.name)
          rec.whenReady().then(() => allow('ready'), () => {})
        })
        rec.discard()
        return r
      }
      case 'set':
        return this.settle(c, cs.name, () => cs.path !== undefined ? c.record.setDataWithAck(cs.name, cs.path, cs.data)
          : c.record.setDataWithAck(cs.name, cs.data))
      case 'snapshot': return this.settle(c, cs.name, () => c.record.snapshot(cs.name))
      case 'head': return this.settle(c, cs.name, () => c.record.head(cs.name))
      case 'has': return this.settle(c, cs.name, () => c.record.has(cs.name))
      case 'make': return this.settle(c, cs.name, () => c.rpc.make(cs.name, cs.data))
      case 'presence':
        return this.settle(c, undefined, () => cs.names ? c.presence.getAll(cs.names) : c.presence.getAll())
      case 'emit': {
        // admin observes: subscribed (confirmed by its own probe arriving), then the user emits
        await this.subscribed(admin, cs.name)
        const want = JSON.stringify(cs.data)
        const r = await this.race(c, cs.name, (allow) => {
          const h = (d) => { if (JSON.stringify(d) === want) { admin.event.unsubscribe(cs.name, h); allow('delivered') } }
          admin.event.subscribe(cs.name, h)
          c.event.emit(cs.name, cs.data)
        })
        admin.event.unsubscribe(cs.name)
        return r
      }
      case 'subscribe': {
        const probe = { probe: cs.user + '-' + cs.name }
        let stop = false
        let h
        const r = await this.race(c, cs.name, (allow) => {
          h = (d) => { if (d && d.probe === probe.probe) { stop = true; allow('received') } }
          c.event.subscribe(cs.name, h)
          const loop = async () => { while (!stop) { await post(this.base, 'admin', { topic: 'event', action: 'emit', eventName: cs.name, data: probe }) } }
          loop()
        })
        stop = true
        c.event.unsubscribe(cs.name, h)
        return r
      }
      case 'provide': {
        let stop = false
        const r = await this.race(c, cs.name, (allow) => {
          c.rpc.provide(cs.name, (data, response) => { stop = true; response.send('ok'); allow('called') })
          const loop = async () => { while (!stop) { await post(this.base, 'admin', { topic: 'rpc', action: 'make', rpcName: cs.name, data: { a: 1 } }) } }
          loop()
        })
        stop = true
        try { c.rpc.unprovide(cs.name) } catch (e) {}
        return r
      }
      case 'listen': {
        let stop = false
        const r = await this.race(c, cs.pattern, (allow) => {
          c.event.listen(cs.pattern, (match, response) => { stop = true; response.reject(); allow('asked for ' + match) })
          const loop = async () => {
            while (!stop) {
              const h = () => {}
              admin.event.subscribe(cs.sample, h)
              await post(this.base, 'admin', { topic: 'presence', action: 'query' }) // a round trip
              admin.event.unsubscribe(cs.sample, h)
              await post(this.base, 'admin', { topic: 'presence', action: 'query' })
            }
          }
          loop()
        })
        stop = true
        try { c.event.unlisten(cs.pattern) } catch (e) {}
        return r
      }
    }
    throw new Error('unknown op ' + cs.op)
  }

  // A promise-returning action: its result, or a denial error event, whichever comes first.
  settle (c, name, start) {
    return this.race(c, name, (allow, deny) => {
      start().then((v) => allow('ok ' + JSON.stringify(v === undefined ? null : v).slice(0, 40)),
        (e) => denial(e) ? deny(String(e)) : allow(String(e && e.message || e)))
    })
  }

  // Subscribes c to name and waits until an admin probe emitted over HTTP arrives.
  async subscribed (c, name) {
    let got = false
    const tag = 'sub-' + Math.random()
    const h = (d) => { if (d && d.probe === tag) got = true }
    c.event.subscribe(name, h)
    const end = Date.now() + DEADLINE
    while (!got && Date.now() < end) {
      await post(this.base, 'admin', { topic: 'event', action: 'emit', eventName: name, data: { probe: tag } })
    }
    c.event.unsubscribe(name, h)
    if (!got) throw new Error(`admin could not subscribe to ${name}`)
  }

  close () { for (const c of Object.values(this.clients)) c.close() }
}


function describe (cs) {
  if (cs.kind === 'http') {
    const c = { ...cs.cmd }
    const what = c.recordName || c.listName || c.eventName || c.rpcName || (c.names ? JSON.stringify(c.names) : '')
    const rest = []
    if (c.path !== undefined) rest.push('path=' + c.path)
    if (c.data !== undefined) rest.push('data=' + JSON.stringify(c.data))
    return `http ${c.topic} ${c.action} ${what} ${rest.join(' ')}`.trim()
  }
  const rest = []
  if (cs.path !== undefined) rest.push('path=' + cs.path)
  if (cs.data !== undefined) rest.push('data=' + JSON.stringify(cs.data))
  if (cs.names) rest.push('names=' + JSON.stringify(cs.names))
  return `ws(${TRANSPORT[cs.user]}) ${cs.op} ${cs.name || cs.pattern || ''} ${rest.join(' ')}`.trim()
}

async function runAll (base, label) {
  const s = new Server(base)
  const out = []
  for (const [i, cs] of cases.entries()) {
    try {
      out.push(cs.kind === 'http' ? await post(base, cs.user, cs.cmd) : await s.rt(cs))
    } catch (e) {
      out.push({ decision: 'error', detail: String(e && e.message || e) })
    }
    const r = out[out.length - 1]
    if (args.verbose || r.decision === 'timeout' || r.decision === 'error') {
      console.error(`[${label}] #${i + 1} ${cs.user} ${describe(cs)}: ${r.decision} (${r.detail})`)
    }
  }
  s.close()
  return out
}

async function main () {
  if (args.only) cases.splice(0, cases.length, ...cases.filter((c) => c.kind === args.only))
  const ref = await runAll(args.ref, 'deepstream')
  const ms = await runAll(args.ms, 'moonstream')
  const lines = []
  let passed = 0
  let failed = 0
  cases.forEach((cs, i) => {
    const a = ref[i]
    const b = ms[i]
    const same = a.decision === b.decision && a.decision !== 'timeout' && a.decision !== 'error'
    same ? passed++ : failed++
    lines.push(`${same ? 'ok  ' : 'DIFF'} #${i + 1} ${cs.user.padEnd(5)} ${describe(cs)}\n` +
      `       deepstream: ${a.decision} (${a.detail})   moonstream: ${b.decision} (${b.detail})`)
  })
  const allows = ref.filter((r) => r.decision === 'allow').length
  const summary = `${cases.length} decisions compared (${allows} allowed, ${cases.length - allows} denied by deepstream), ` +
    `${failed} differences`
  fs.writeFileSync(args.log, lines.join('\n') + '\n' + summary + '\n')
  lines.filter((l) => l.startsWith('DIFF')).forEach((l) => console.log(l))
  console.log(summary)
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed === 0 ? 0 : 1)
}

main().catch((e) => { console.error(e); console.log('0 passed, 1 failed'); process.exit(1) })
