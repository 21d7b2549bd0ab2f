// A shared todo list: every open page holds the record todo/list and sees
// the others' changes at once (the client's default binary transport); the summary line comes from the Lua RPC
// todo-summary; the online line from presence.
'use strict'
const Client = window.DeepstreamClient.DeepstreamClient || window.DeepstreamClient
const client = new Client(`ws://${location.host}/deepstream`)
const me = `user-${Math.random().toString(36).slice(2, 8)}`
const $ = (id) => document.getElementById(id)

function render (data) {
  const items = (data && data.items) || []
  const ul = $('items')
  ul.textContent = ''
  items.forEach((item, i) => {
    const li = document.createElement('li')
    li.className = item.done ? 'done' : ''
    const box = document.createElement('input')
    box.type = 'checkbox'
    box.checked = !!item.done
    box.addEventListener('change', () => list.set(`items[${i}].done`, box.checked, refreshSummary))
    const text = document.createElement('span')
    text.textContent = item.text
    li.append(box, ' ', text)
    ul.append(li)
  })
  refreshSummary()
}

// The summary is computed on the server; after our own change it is asked
// again once the write is acknowledged (the server has it by then).
function refreshSummary () {
  client.rpc.make('todo-summary', null)
    .then((s) => { $('summary').textContent = s })
    .catch((e) => { $('summary').textContent = `summary failed: ${e}` })
}

async function showOnline () {
  const users = await client.presence.getAll()
  $('online').textContent = `others online: ${users.length}`
}

let list
;(async () => {
  await client.login({ username: me })
  list = client.record.getRecord('todo/list')
  await list.whenReady()
  list.subscribe(render, true)
  client.presence.subscribe(showOnline)
  showOnline()
  $('status').textContent = `connected as ${me}`
  $('add-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    const text = $('new').value.trim()
    if (!text) return
    const items = (list.get('items') || []).concat([{ text, done: false }])
    list.set('items', items, refreshSummary)
    $('new').value = ''
  })
})().catch((e) => { $('status').textContent = `error: ${e}` })
