// The console acting, finding and following live, in a real headless Chromium (Debian's
// `chromium`, driven by playwright-core) against the real web server and an engine with a worker:
// approve a waiting task with a comment, cancel a running workflow, retry a failed one and watch it
// complete without reloading the page, find a workflow by its idempotency key, read a task's
// result and attempts. Every action goes through the in-page confirmation dialog and the HTTP API.
// The browser runs in Europe/Paris, so times show their zone (GMT+1). Screenshots go to
// test-artifacts/, and the latency from a task's completion (its completed_at, database clock on
// this machine) to the page showing it goes to test-artifacts/ui-latency.json (measured, not
// asserted: performance targets are checked by benchmarks).
import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { type Browser, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, PermanentError, type Json } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { settled, eventually, testEngine } from '../helpers/engine.ts'
import { inCi } from '../helpers/tools.ts'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const haveChromium = existsSync(CHROMIUM)
if (!haveChromium && inCi) {
  throw new Error(`${CHROMIUM} is missing: CI must install Debian's chromium (apt-get install -y chromium)`)
}
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url))

// Held until the test releases it, per workflow: the test decides when a task completes.
const gates = new Map<string, () => void>()
const hold = defineAgent({
  id: 'held',
  handler: (ctx) =>
    new Promise<Json>((resolve, reject) => {
      gates.set(ctx.workflowId, () => resolve({ released: true }))
      ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))
    }),
})
const release = async (workflowId: string) => {
  const open = await eventually(() => gates.get(workflowId), 20_000, 25, `the held task of ${workflowId}`)
  gates.delete(workflowId)
  open()
}
// Fails for good until the cause is "fixed" (the flag), like a bad deploy or an expired credential.
let fixed = false
const charge = defineAgent({
  id: 'charge',
  handler: async (ctx) => {
    if (!fixed) throw new PermanentError('card processor rejected the credential')
    return { charged: (ctx.input as { amount: number }).amount }
  },
})
const lookup = defineAgent({ id: 'lookup', handler: async () => ({ rows: 3, source: 'ledger' }) })

const approvalFlow = defineWorkflow({
  name: 'release',
  tasks: [
    { key: 'sign-off', approval: { timeoutMs: 3_600_000 } },
    { key: 'ship', agent: lookup, dependsOn: ['sign-off'] },
  ],
})
const longRun = defineWorkflow({ name: 'long-run', tasks: [{ key: 'work', agent: hold }] })
const payment = defineWorkflow({
  name: 'payment',
  tasks: [
    { key: 'look-up', agent: lookup, data: { ledger: 'eu-1' } },
    { key: 'charge', agent: charge, dependsOn: ['look-up'] },
    { key: 'settle', agent: hold, dependsOn: ['charge'] },
  ],
})

const { engine } = await testEngine({
  agents: [hold, charge, lookup],
  workflows: [approvalFlow, longRun, payment],
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1', adminToken: undefined })
afterAll(async () => {
  for (const open of gates.values()) open()
  await web.close()
})
const { apiKey } = await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

describe.skipIf(!haveChromium)(
  haveChromium
    ? 'the console in headless Chromium'
    : `the console in headless Chromium: skipped, ${CHROMIUM} is missing (apt-get install chromium)`,
  () => {
    let browser: Browser
    let page: Page
    const problems: string[] = []
    const latencies: { what: string; ms: number }[] = []

    beforeAll(async () => {
      await mkdir(ARTIFACTS, { recursive: true })
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-dev-shm-usage',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      })
      const context = await browser.newContext({
        viewport: { width: 1280, height: 900 },
        timezoneId: 'Europe/Paris',
        locale: 'en-GB',
      })
      page = await context.newPage()
      page.on('console', (message) => {
        if (message.type() === 'error' && !/status of 40[14]/.test(message.text())) {
          problems.push(message.text())
        }
      })
      page.on('pageerror', (error) => problems.push(error.message))
      await page.goto(`${web.url}/ui/`)
      await page.locator('#api-key').fill(apiKey)
      await page.locator('#key-form button[type=submit]').click()
      await page.locator('#live[data-state="up"]').waitFor({ state: 'attached' })
      // A marker that a reload would lose: the page must follow changes without one.
      await page.evaluate(() => ((globalThis as { __sameDocument?: boolean }).__sameDocument = true))
    })
    afterAll(async () => {
      await writeFile(`${ARTIFACTS}ui-latency.json`, `${JSON.stringify(latencies, null, 2)}\n`)
      await browser?.close()
    })

    const sameDocument = () =>
      page.evaluate(() => (globalThis as { __sameDocument?: boolean }).__sameDocument === true)
    const status = () => page.locator('#wf-status').getAttribute('data-status')
    // The page's own navigation (no reload): set location.hash in the page.
    const go = (hash: string) => page.evaluate(`location.hash = ${JSON.stringify(hash)}`)
    const open = async (id: string, task?: string) => {
      await go(`#/workflows/${id}${task ? `/tasks/${task}` : ''}`)
      await expect.poll(() => page.locator('#wf-meta').textContent()).toContain(id)
    }
    /** When (epoch ms, this machine's clock) the page first shows `selector` with data-status `value`. */
    const watchFor = (selector: string, value: string) =>
      page.evaluate<number>(`new Promise((resolve) => {
        const check = () => {
          const node = document.querySelector(${JSON.stringify(selector)})
          if (node?.getAttribute('data-status') !== ${JSON.stringify(value)}) return
          observer.disconnect()
          resolve(performance.timeOrigin + performance.now())
        }
        const observer = new MutationObserver(check)
        observer.observe(document.body, { subtree: true, childList: true, attributes: true })
        check()
      })`)
    const completedAt = async (workflowId: string, key: string) => {
      const t = (await acme.getWorkflow(workflowId)).tasks.find((x) => x.key === key)!
      return (t.completedAt as Date).getTime()
    }

    it('approves a waiting task with a comment, and the workflow goes on', async () => {
      const { id } = await acme.startWorkflow('release')
      await expect
        .poll(async () => (await acme.getWorkflow(id)).tasks.find((t) => t.key === 'sign-off')?.status)
        .toBe('waiting')
      await open(id)
      // Times carry their zone (the browser's: Europe/Paris in December is GMT+1).
      expect(await page.locator('#wf-meta time').first().textContent()).toMatch(
        /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d GMT\+1$/,
      )
      await page.locator('#graph [data-task-key="sign-off"]').click()
      await page.locator('#act-approve').click()
      const dialog = page.locator('#confirm')
      await dialog.waitFor({ state: 'visible' })
      expect(await page.locator('#confirm-title').textContent()).toBe('Approve “sign-off”?')
      await dialog.locator('input[name=approver]').fill('ana')
      await dialog.locator('textarea[name=comment]').fill('checked the release notes')
      await page.screenshot({ path: `${ARTIFACTS}ui-approve-dialog.png` })
      await page.locator('#confirm-yes').click()
      await expect.poll(status, { timeout: 15_000 }).toBe('completed')
      expect(await dialog.isVisible()).toBe(false)
      // The decision is in the audit trail, with who made it and the comment.
      const decided = page.locator('#audit tr[data-action="task_completed"]').first()
      await decided.waitFor()
      const events = await acme.history(id)
      expect(events.some((e) => e.actor === 'ana')).toBe(true)
      expect(
        JSON.stringify((await acme.getWorkflow(id)).tasks.find((t) => t.key === 'sign-off')?.result),
      ).toContain('checked the release notes')
      expect(await page.locator('#graph [data-task-key="ship"]').getAttribute('data-status')).toBe(
        'completed',
      )
      expect(await sameDocument()).toBe(true)
      await page.screenshot({ path: `${ARTIFACTS}ui-approved.png`, fullPage: true })
    })

    it('cancels a running workflow after a confirmation, and says why it ended', async () => {
      const { id } = await acme.startWorkflow('long-run')
      await eventually(() => gates.get(id))
      await open(id)
      await expect
        .poll(() => page.locator('#graph [data-task-key="work"]').getAttribute('data-status'))
        .toBe('running')
      await page.locator('#act-cancel').click()
      await page.locator('#confirm').waitFor({ state: 'visible' })
      // Going back changes nothing.
      await page.locator('#confirm-no').click()
      expect((await acme.getWorkflow(id)).status).toBe('running')
      await page.locator('#act-cancel').click()
      await page.locator('#confirm input[name=reason]').fill('wrong input file')
      await page.screenshot({ path: `${ARTIFACTS}ui-cancel-dialog.png` })
      await page.locator('#confirm-yes').click()
      await expect.poll(status, { timeout: 15_000 }).toBe('cancelled')
      expect(await page.locator('#wf-error').textContent()).toBe('Cancelled: wrong input file')
      expect((await acme.getWorkflow(id)).status).toBe('cancelled')
      expect(await page.locator('#act-cancel').isVisible()).toBe(false)
      expect(await page.locator('#act-retry').isVisible()).toBe(true)
      await page.screenshot({ path: `${ARTIFACTS}ui-cancelled.png`, fullPage: true })
    })

    it('retries a failed workflow and follows it to completion without reloading the page', async () => {
      fixed = false
      const { id } = await acme.startWorkflow('payment', { amount: 42 })
      expect((await settled(engine, 'acme', id)).status).toBe('failed')
      await open(id)
      expect(await status()).toBe('failed')
      expect(await page.locator('#wf-error').textContent()).toBe(
        'Failed: task “charge” — PermanentError: card processor rejected the credential',
      )
      fixed = true // the cause is fixed: the same workflow runs again from where it stopped
      await page.locator('#act-retry').click()
      await page.locator('#confirm').waitFor({ state: 'visible' })
      await page.locator('#confirm-yes').click()
      // Running again (the page follows the stream): charge completes, settle is held.
      await expect
        .poll(() => page.locator('#graph [data-task-key="charge"]').getAttribute('data-status'), {
          timeout: 15_000,
        })
        .toBe('completed')
      expect(await status()).toBe('running')
      await page.screenshot({ path: `${ARTIFACTS}ui-retry-running.png`, fullPage: true })

      const shown = watchFor('#wf-status', 'completed')
      await release(id)
      const pageMs = await shown
      latencies.push({
        what: 'retry: last task completed -> page',
        ms: pageMs - (await completedAt(id, 'settle')),
      })
      expect(await status()).toBe('completed')
      expect(await sameDocument()).toBe(true)
      // Completed tasks kept their results and ran once; the retried one shows both attempts.
      const attempts = await page
        .locator('#timeline g.lane[data-task-key="charge"] g.attempt')
        .evaluateAll((gs) => gs.map((g) => [g.getAttribute('data-attempt'), g.getAttribute('data-outcome')]))
      expect(attempts).toEqual([
        ['1', 'failed'],
        ['2', 'completed'],
      ])
      expect(await page.locator('#timeline g.lane[data-task-key="look-up"] g.attempt').count()).toBe(1)
      await page.screenshot({ path: `${ARTIFACTS}ui-retry-completed.png`, fullPage: true })
    })

    it('finds a workflow by its idempotency key', async () => {
      const wanted = await acme.startWorkflow('long-run', null, { idempotencyKey: 'invoice-2026-0042' })
      await acme.startWorkflow('long-run', null, { idempotencyKey: 'invoice-2026-0043' })
      await go('#/')
      await page.locator('#workflows tbody tr').nth(1).waitFor()
      await page.locator('#find-kind').selectOption('idempotencyKey')
      await page.locator('#find-value').fill('invoice-2026-0042')
      await page.locator('#find-form button[type=submit]').click()
      await expect
        .poll(() =>
          page.locator('#workflows tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.workflowId)),
        )
        .toEqual([wanted.id])
      await page.screenshot({ path: `${ARTIFACTS}ui-find.png`, fullPage: true })
      await page.locator('#find-value').fill('no-such-key')
      await page.locator('#find-form button[type=submit]').click()
      await page.locator('#list-empty').waitFor({ state: 'visible' })
      expect(await page.locator('#list-empty').textContent()).toBe('No workflow matches.')
      await page.locator('#clear-filters').click()
      for (const id of [...gates.keys()]) await release(id)
    })

    it("reads a task's data, result and attempts", async () => {
      fixed = true
      const { id } = await acme.startWorkflow('payment', { amount: 7 })
      await release(id)
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      await open(id)
      await page.locator('#tasks tr[data-task-key="look-up"] a').click()
      const panel = page.locator('#task-panel')
      await panel.waitFor({ state: 'visible' })
      expect(page.url()).toBe(`${web.url}/ui/#/workflows/${id}/tasks/look-up`)
      expect(await page.locator('#task-status').getAttribute('data-status')).toBe('completed')
      expect(JSON.parse((await page.locator('#task-result').textContent())!)).toEqual({
        rows: 3,
        source: 'ledger',
      })
      expect(JSON.parse((await page.locator('#task-data').textContent())!)).toEqual({ ledger: 'eu-1' })
      expect(await page.locator('#task-error').textContent()).toBe('—')
      const rows = await page
        .locator('#task-attempts tbody tr')
        .evaluateAll((trs) => trs.map((tr) => [tr.dataset.attempt, tr.dataset.outcome]))
      expect(rows).toEqual([['1', 'completed']])
      expect(await page.locator('#task-attempts tbody tr td').nth(3).textContent()).toMatch(/ GMT\+1$/)
      expect(await page.locator('#act-replay').isVisible()).toBe(true)
      await page.screenshot({ path: `${ARTIFACTS}ui-task-result.png`, fullPage: true })
    })

    it('measures the latency from a task completing to the page showing it', async () => {
      await go('#/')
      for (let i = 0; i < 5; i++) {
        const { id } = await acme.startWorkflow('long-run')
        await eventually(() => gates.get(id))
        await open(id)
        const shown = watchFor('#graph [data-task-key="work"]', 'completed')
        await release(id)
        const pageMs = await shown
        latencies.push({ what: 'workflow page', ms: pageMs - (await completedAt(id, 'work')) })
      }
      expect(latencies.length).toBeGreaterThanOrEqual(6)
    })

    it('ran without script errors or Content-Security-Policy violations', () => {
      expect(problems).toEqual([])
    })
  },
)
