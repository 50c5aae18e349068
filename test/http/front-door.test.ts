// What a person or a platform meets first: the server's root address, health probes in the logs,
// and a start without deprecation warnings.
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { startWeb } from '../../src/web/server.ts'
import { double, diamond, sum } from '../fixtures/workflows.ts'
import { testEngine } from '../helpers/engine.ts'

const lines: { level: number; msg: string; req?: { url?: string } }[] = []
const sink = new Writable({
  write(chunk, _encoding, done) {
    for (const line of String(chunk).split('\n')) if (line.trim()) lines.push(JSON.parse(line))
    done()
  },
})
const warnings: string[] = []
const onWarning = (warning: Error & { code?: string }) => warnings.push(`${warning.code}: ${warning.message}`)
process.on('warning', onWarning)

const { engine } = await testEngine({
  agents: [double, sum],
  workflows: [diamond],
  log: pino({ level: 'info' }, sink),
})
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
afterAll(async () => {
  process.off('warning', onWarning)
  await web.close()
})

describe('the front door', () => {
  it('sends a browser at the root address to the web page', async () => {
    const res = await fetch(`${web.url}/`, { redirect: 'manual' })
    expect(res.status).toBe(302)
    expect(res.headers.get('location')).toBe('/ui/')
    const page = await fetch(`${web.url}/`)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('<html')
  })

  it('does not log health probes that succeed, and logs other requests', async () => {
    for (let i = 0; i < 3; i++) {
      expect((await fetch(`${web.url}/healthz`)).status).toBe(200)
      expect((await fetch(`${web.url}/readyz`)).status).toBe(200)
    }
    expect((await fetch(`${web.url}/openapi.json`)).status).toBe(200)
    await new Promise((r) => setImmediate(r))
    const urls = lines.filter((l) => l.req?.url).map((l) => l.req?.url)
    expect(urls).toContain('/openapi.json')
    expect(urls.filter((u) => u === '/healthz' || u === '/readyz')).toEqual([])
  })

  it('starts without deprecation warnings', () => {
    expect(warnings.filter((w) => w.startsWith('FST'))).toEqual([])
  })
})
