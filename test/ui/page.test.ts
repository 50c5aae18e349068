// The read-only web page (/ui/), in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core) against the real web server and an engine with a worker: a wrong key is refused
// visibly, the workflows are listed and refreshed while one runs, and a workflow's task graph shows
// each task's state (a diamond that completed, a chain whose middle task failed for good, an approval
// that waits, then is approved). Screenshots
// go to test-artifacts/.
import { existsSync } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { type Browser, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { UI_CSP } from '../../src/web/ui.ts'
import { diamond, double, heldAgent, sum } from '../fixtures/workflows.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { inCi } from '../helpers/tools.ts'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const haveChromium = existsSync(CHROMIUM)
if (!haveChromium && inCi) {
  throw new Error(`${CHROMIUM} is missing: CI must install Debian's chromium (apt-get install -y chromium)`)
}
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url))
// A string that would run if the page ever parsed API data as HTML.
const HOSTILE = '<img src=x onerror="window.__pwned=1"> is not valid input'

const fetcher = defineAgent({ id: 'fetcher', handler: async () => ({ rows: 3 }) })
const parser = defineAgent({
  id: 'parser',
  handler: async () => {
    throw new PermanentError(HOSTILE)
  },
})
const store = defineAgent({ id: 'store', handler: async () => null })
const waits = heldAgent('waits')
const ingest = defineWorkflow({
  name: 'ingest',
  tasks: [
    { key: 'fetch', agent: fetcher },
    { key: 'parse', agent: parser, dependsOn: ['fetch'] },
    { key: 'store', agent: store, dependsOn: ['parse'] },
  ],
})
const slow = defineWorkflow({ name: 'slow', tasks: [{ key: 'wait', agent: waits.agent }] })
// Waits for a person: the page says what for, and until when.
const gated = defineWorkflow({
  name: 'gated',
  tasks: [
    { key: 'release', approval: { timeoutMs: 3_600_000 } },
    { key: 'ship', agent: store, dependsOn: ['release'] },
  ],
})

const { engine } = await testEngine({
  agents: [double, sum, fetcher, parser, store, waits.agent],
  workflows: [diamond, ingest, slow, gated],
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1', adminToken: undefined })
afterAll(async () => {
  waits.release()
  await web.close()
})
const { apiKey } = await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

describe('the page and its files', () => {
  it('is served at /ui/ with a strict Content-Security-Policy, its assets with their types', async () => {
    const page = await fetch(`${web.url}/ui/`)
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8')
    expect(page.headers.get('content-security-policy')).toBe(UI_CSP)
    expect(UI_CSP).toContain("default-src 'self'")
    expect(UI_CSP).not.toContain('unsafe-inline')
    expect(page.headers.get('x-content-type-options')).toBe('nosniff')
    const html = await page.text()
    expect(html).toContain('<script type="module" src="app.js"></script>')
    expect(html).not.toMatch(/<script>|<style|\son[a-z]+=/i)

    const types = await Promise.all(
      ['app.js', 'style.css', 'index.html'].map(async (file) => {
        const res = await fetch(`${web.url}/ui/${file}`)
        await res.arrayBuffer()
        return [file, res.status, res.headers.get('content-type')]
      }),
    )
    expect(types).toEqual([
      ['app.js', 200, 'text/javascript; charset=utf-8'],
      ['style.css', 200, 'text/css; charset=utf-8'],
      ['index.html', 200, 'text/html; charset=utf-8'],
    ])

    const etag = page.headers.get('etag')!
    const again = await fetch(`${web.url}/ui/`, { headers: { 'if-none-match': etag } })
    expect(again.status).toBe(304)
    const bare = await fetch(`${web.url}/ui`, { redirect: 'manual' })
    expect([bare.status, bare.headers.get('location')]).toEqual([301, '/ui/'])
    for (const path of ['/ui/nope.js', '/ui/..%2Fui.ts', '/ui/%2E%2E%2F%2E%2E%2Fpackage.json']) {
      const missing = await fetch(`${web.url}${path}`)
      expect([path, missing.status]).toEqual([path, 404])
    }
  })
})

describe.skipIf(!haveChromium)(
  haveChromium
    ? 'the page in headless Chromium'
    : `the page in headless Chromium: skipped, ${CHROMIUM} is missing (apt-get install chromium)`,
  () => {
    let browser: Browser
    let page: Page
    const problems: string[] = []
    let diamondId: string
    let ingestId: string
    let slowId: string

    beforeAll(async () => {
      diamondId = (await acme.startWorkflow('diamond', { n: 3 })).id
      ingestId = (await acme.startWorkflow('ingest', null, { correlationId: 'batch-7' })).id
      expect((await settled(engine, 'acme', diamondId)).status).toBe('completed')
      expect((await settled(engine, 'acme', ingestId)).status).toBe('failed')
      slowId = (await acme.startWorkflow('slow')).id

      await mkdir(ARTIFACTS, { recursive: true })
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-dev-shm-usage',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      })
      page = await browser.newPage({ viewport: { width: 1280, height: 860 } })
      // A Content-Security-Policy violation or a script error shows up here.
      page.on('console', (message) => {
        if (message.type() === 'error' && !/status of 40[14]/.test(message.text())) {
          problems.push(message.text())
        }
      })
      page.on('pageerror', (error) => problems.push(error.message))
    })
    afterAll(async () => {
      await browser?.close()
    })

    const rowStatus = (id: string) =>
      page.locator(`#workflows tbody tr[data-workflow-id="${id}"]`).getAttribute('data-status')

    it('refuses a wrong key with a visible message, and keeps no key', async () => {
      const answer = await page.goto(`${web.url}/ui/`)
      expect(answer?.headers()['content-security-policy']).toBe(UI_CSP)
      await page.locator('#api-key').fill('eq_not-a-key')
      await page.locator('#key-form button[type=submit]').click()
      const alert = page.getByRole('alert')
      await alert.waitFor({ state: 'visible' })
      expect(await alert.textContent()).toMatch(/the key is not valid/i)
      expect(await page.locator('#login').isVisible()).toBe(true)
      expect(await page.evaluate(() => [sessionStorage.length, localStorage.length])).toEqual([0, 0])
      await page.screenshot({ path: `${ARTIFACTS}ui-wrong-key.png` })
    })

    it("lists the tenant's workflows with their statuses, refreshing while one runs", async () => {
      await page.locator('#api-key').fill(apiKey)
      await page.locator('#key-form button[type=submit]').click()
      await page.locator('#workflows tbody tr').nth(2).waitFor()
      expect(await page.locator('#error').isHidden()).toBe(true)
      expect(await page.evaluate(() => sessionStorage.getItem('equilateral.apiKey'))).toBe(apiKey)
      expect(await page.evaluate(() => localStorage.length)).toBe(0)

      const rows = await page
        .locator('#workflows tbody tr')
        .evaluateAll((trs) =>
          trs.map((tr) => [
            tr.getAttribute('data-workflow-id'),
            tr.querySelector('a')?.textContent,
            tr.getAttribute('data-status'),
          ]),
        )
      expect(rows).toEqual([
        [slowId, 'slow', 'running'],
        [ingestId, 'ingest', 'failed'],
        [diamondId, 'diamond', 'completed'],
      ])
      // Live: the event stream is up (no polling).
      await expect.poll(() => page.locator('#live').getAttribute('data-state')).toBe('up')

      // The running one ends: the list shows it without a reload.
      waits.release()
      await settled(engine, 'acme', slowId)
      await expect.poll(() => rowStatus(slowId), { timeout: 10_000 }).toBe('completed')

      await page.locator('#status-filter').selectOption('failed')
      await expect
        .poll(() =>
          page.locator('#workflows tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.status)),
        )
        .toEqual(['failed'])
      await page.locator('#status-filter').selectOption('')
      await page.locator('#workflows tbody tr').nth(2).waitFor()
      await page.screenshot({ path: `${ARTIFACTS}ui-list.png`, fullPage: true })
    })

    it("draws the diamond's task graph: 4 completed tasks in 3 layers, 4 arrows, and a table", async () => {
      await page.getByRole('link', { name: 'diamond' }).click()
      await page.locator('#graph svg g.node').nth(3).waitFor()
      expect(page.url()).toBe(`${web.url}/ui/#/workflows/${diamondId}`)
      expect(await page.locator('#wf-title').textContent()).toBe('diamond v1')
      expect(await page.locator('#wf-status').getAttribute('data-status')).toBe('completed')

      const nodes = await page
        .locator('#graph svg [data-task-key]')
        .evaluateAll((gs) =>
          gs.map((g) => [
            g.getAttribute('data-task-key'),
            g.getAttribute('data-status'),
            g.getAttribute('data-layer'),
            g.querySelector('.status-label')?.textContent,
          ]),
        )
      expect(nodes).toEqual([
        ['a', 'completed', '0', 'completed'],
        ['b', 'completed', '1', 'completed'],
        ['c', 'completed', '1', 'completed'],
        ['d', 'completed', '2', 'completed'],
      ])
      const edges = await page
        .locator('#graph svg path.edge')
        .evaluateAll((ps) => ps.map((p) => `${p.getAttribute('data-from')}->${p.getAttribute('data-to')}`))
      expect(edges.sort()).toEqual(['a->b', 'a->c', 'b->d', 'c->d'])
      // Each node says its attempt and how long it ran.
      expect(await page.locator('#graph [data-task-key="a"] .facts').textContent()).toMatch(
        /^attempt 1 · \d+(\.\d+)? m?s$/,
      )
      // Arrows go from a dependency's right edge to its dependent's left edge.
      const box = (key: string) => page.locator(`#graph [data-task-key="${key}"] rect.box`).boundingBox()
      const [a, b, d] = await Promise.all([box('a'), box('b'), box('d')])
      expect(a!.x + a!.width).toBeLessThan(b!.x)
      expect(b!.x + b!.width).toBeLessThan(d!.x)

      const table = await page
        .locator('#tasks tbody tr')
        .evaluateAll((trs) => trs.map((tr) => [tr.dataset.taskKey, tr.dataset.status]))
      expect(table).toEqual([
        ['a', 'completed'],
        ['b', 'completed'],
        ['c', 'completed'],
        ['d', 'completed'],
      ])
      await page.screenshot({ path: `${ARTIFACTS}ui-workflow.png`, fullPage: true })
    })

    it('shows the failed workflow: the failed task, its skipped dependent, the error as text', async () => {
      await page.getByRole('link', { name: /All workflows/ }).click()
      await page.getByRole('link', { name: 'ingest' }).click()
      await page.locator('#graph [data-task-key="store"]').waitFor()
      expect(await page.locator('#wf-status').getAttribute('data-status')).toBe('failed')
      const nodes = await page
        .locator('#graph svg [data-task-key]')
        .evaluateAll((gs) => gs.map((g) => [g.getAttribute('data-task-key'), g.getAttribute('data-status')]))
      // The engine fails the workflow and skips the tasks that had not started.
      expect(nodes).toEqual([
        ['fetch', 'completed'],
        ['parse', 'failed'],
        ['store', 'skipped'],
      ])
      expect(await page.locator('#graph path.edge').count()).toBe(2)
      expect(await page.locator('#wf-meta').textContent()).toContain('batch-7')
      expect(await page.locator('#wf-error').textContent()).toBe(
        `Failed: task “parse” — PermanentError: ${HOSTILE}`,
      )
      expect(await page.locator('#tasks tr[data-task-key="parse"] td.err').textContent()).toBe(
        `PermanentError: ${HOSTILE}`,
      )
      // The error was shown as text: no element was made from it, nothing ran.
      expect(await page.locator('main img').count()).toBe(0)
      expect(await page.evaluate(() => (globalThis as { __pwned?: number }).__pwned)).toBeUndefined()
      await page.screenshot({ path: `${ARTIFACTS}ui-workflow-failed.png`, fullPage: true })
    })

    it('shows what a waiting task waits for, and the workflow going on once it is approved', async () => {
      const { id } = await acme.startWorkflow('gated')
      await expect
        .poll(async () => (await acme.getWorkflow(id)).tasks.find((t) => t.key === 'release')?.status)
        .toBe('waiting')
      await page.goto(`${web.url}/ui/#/workflows/${id}`)
      const release = page.locator('#graph [data-task-key="release"]')
      await release.waitFor()
      expect(await release.getAttribute('data-status')).toBe('waiting')
      expect(await release.locator('.agent').textContent()).toBe('approval “release”')
      // The box says until when it waits (local time, with the day when not today), not how long
      // it has "run".
      const deadline = (await acme.getWorkflow(id)).tasks.find((t) => t.key === 'release')?.wait?.deadline
      const local = await page.evaluate(
        (iso) => new Date(iso).toTimeString().slice(0, 8),
        deadline!.toISOString(),
      )
      const until = new RegExp(`^until (\\d\\d-\\d\\d )?${local}$`)
      expect(await release.locator('.facts').textContent()).toMatch(until)
      expect(await release.getAttribute('aria-label')).toMatch(
        new RegExp(`^release, approval “release”: waiting, until (\\d\\d-\\d\\d )?${local}$`),
      )
      expect(await release.locator('title').textContent()).toMatch(
        /^release \(approval “release”\): waiting\nwaits for a decision until .+\n/,
      )
      const row = page.locator('#tasks tr[data-task-key="release"]')
      expect(await row.locator('td').nth(1).textContent()).toBe('approval “release”')
      expect(await row.locator('td[title]').getAttribute('title')).toMatch(/^waits for a decision until /)
      expect(await page.locator('#graph [data-task-key="ship"]').getAttribute('data-status')).toBe('pending')
      await page.screenshot({ path: `${ARTIFACTS}ui-workflow-waiting.png`, fullPage: true })

      // Approved through the API, the page follows without a reload.
      await acme.decide(id, { name: 'release', approved: true, approver: 'ana' })
      await expect
        .poll(() => page.locator('#wf-status').getAttribute('data-status'), { timeout: 10_000 })
        .toBe('completed')
      expect(await release.getAttribute('data-status')).toBe('completed')
    })

    it('says "not found" for a workflow id the tenant does not have', async () => {
      await page.goto(`${web.url}/ui/#/workflows/00000000-0000-4000-8000-000000000000`)
      const alert = page.getByRole('alert')
      await alert.waitFor({ state: 'visible' })
      expect(await alert.textContent()).toMatch(/not found/i)
      expect(await page.locator('#graph svg').count()).toBe(0)
    })

    it('ran without script errors or Content-Security-Policy violations', async () => {
      expect(problems).toEqual([])
    })
  },
)
