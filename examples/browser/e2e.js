// End-to-end test of the browser example in headless Chromium (Debian's
// chromium driven by playwright-core): two pages of the shared todo list see
// each other's changes, and the summary from the Lua RPC follows.
//   node e2e.js http://127.0.0.1:PORT      (PLAYWRIGHT_DIR: where playwright-core is installed)
// Prints one PASS/FAIL line per check, then "N passed, N failed".
'use strict'
const path = require('path')
const { chromium } = require(path.join(process.env.PLAYWRIGHT_DIR || '/tmp/moonstream-playwright', 'node_modules', 'playwright-core'))

const url = process.argv[2]
const results = { passed: 0, failed: 0 }
async function check (name, fn) {
  try { await fn(); results.passed++; console.log(`PASS ${name}`) } catch (e) { results.failed++; console.log(`FAIL ${name}: ${e.message.split('\n')[0]}`) }
}

;(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  })
  const hard = setTimeout(() => { console.log('FAIL hard timeout'); process.exit(1) }, 60000)
  try {
    const a = await browser.newPage()
    const b = await browser.newPage()
    const errors = []
    for (const p of [a, b]) p.on('pageerror', (e) => errors.push(String(e)))
    const item = `milk ${Math.random().toString(36).slice(2, 6)}`
    await check('both pages connect and log in', async () => {
      await a.goto(url); await b.goto(url)
      await a.waitForSelector('#status:has-text("connected as")', { timeout: 10000 })
      await b.waitForSelector('#status:has-text("connected as")', { timeout: 10000 })
    })
    await check('an item added on page A appears on page B', async () => {
      await a.fill('#new', item)
      await a.click('#add')
      await b.waitForSelector(`li:has-text("${item}")`, { timeout: 5000 })
    })
    await check('ticking it on page B ticks it on page A', async () => {
      await b.locator(`li:has-text("${item}") input[type=checkbox]`).check()
      await a.waitForSelector(`li.done:has-text("${item}") input:checked`, { timeout: 5000 })
    })
    await check('the summary from the Lua RPC follows on both pages', async () => {
      for (const p of [a, b]) {
        await p.waitForFunction(() => /^(\d+) of (\d+) done$/.test(document.getElementById('summary').textContent) &&
          document.getElementById('summary').textContent.split(' ')[0] !== '0', null, { timeout: 5000 })
      }
      const [sa, sb] = await Promise.all([a.textContent('#summary'), b.textContent('#summary')])
      if (sa !== sb) throw new Error(`summaries differ: ${sa} / ${sb}`)
    })
    await check('presence: each page sees the other online', async () => {
      await a.waitForSelector('#online:has-text("others online: 1")', { timeout: 5000 })
    })
    await a.screenshot({ path: process.env.SCREENSHOT || '/tmp/moonstream-browser-e2e.png' })
    await check('no page errors', async () => { if (errors.length) throw new Error(errors.join('; ')) })
  } finally {
    clearTimeout(hard)
    await browser.close()
  }
  console.log(`${results.passed} passed, ${results.failed} failed`)
  process.exit(results.failed ? 1 : 0)
})().catch((e) => { console.log(`FAIL harness: ${e.stack}`); console.log(`${results.passed} passed, ${results.failed + 1} failed`); process.exit(1) })
