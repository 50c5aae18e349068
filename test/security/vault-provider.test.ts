// The Vault transit key provider against a fake Vault on the loopback that speaks the transit API
// (POST /v1/transit/{encrypt,decrypt,rewrap}/<key>, X-Vault-Token, "vault:v<n>:" ciphertexts, key
// versions rotated by POST /v1/transit/keys/<key>/rotate), with an engine on a real database:
//   - the data keys are wrapped by Vault (the KEK never leaves it); workflows run and read;
//   - the unwrapped keys are cached: after the first workflow, none costs a call to Vault;
//   - KEK rotation in Vault, then `keys rewrap`: data keys under the new version, payloads unchanged;
//   - a refusing or unreachable Vault is a typed error whose message, and the logs written while it
//     fails, hold no key material (no data key Vault saw, in any encoding, and not the token).
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import {
  defineAgent,
  defineWorkflow,
  EncryptionError,
  KeyRing,
  VaultTransitProvider,
} from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { settled, testEngine } from '../helpers/engine.ts'

const TOKEN = `hvs.${randomBytes(18).toString('base64url')}`
const SECRET = 'VAULT-SECRET-91x'

/** A fake Vault transit engine: one named key with versions, AES-256-GCM per version. */
class FakeVault {
  readonly versions: Buffer[] = [randomBytes(32)]
  readonly calls: string[] = []
  /** Every plaintext (a data key, base64) it was given or gave back: what must never leak. */
  readonly seen = new Set<string>()
  /** Answer every call with this status instead (outage, revoked token). */
  failWith: number | undefined
  #server: Server | undefined

  async start(): Promise<string> {
    this.#server = createServer((req, res) => {
      void this.#handle(req).then(
        ([status, body]) => {
          res.writeHead(status, { 'content-type': 'application/json' })
          res.end(JSON.stringify(body))
        },
        () => {
          res.writeHead(500)
          res.end('{"errors":["internal"]}')
        },
      )
    })
    await new Promise<void>((resolve) => this.#server?.listen(0, '127.0.0.1', resolve))
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#server?.close(() => resolve()) ?? resolve())
  }

  async #handle(req: IncomingMessage): Promise<[number, unknown]> {
    let raw = ''
    for await (const chunk of req) raw += chunk
    const m = /^\/v1\/transit\/(encrypt|decrypt|rewrap|keys)\/([^/]+)(\/rotate)?$/.exec(req.url ?? '')
    this.calls.push(m ? m[1] + (m[3] ?? '') : (req.url ?? ''))
    if (this.failWith) return [this.failWith, { errors: ['nope'] }]
    if (req.headers['x-vault-token'] !== TOKEN) return [403, { errors: ['permission denied'] }]
    if (req.method !== 'POST' || !m || m[2] !== 'eq-kek') return [404, { errors: [] }]
    const body = raw ? (JSON.parse(raw) as Record<string, string>) : {}
    switch (m[1]) {
      case 'keys':
        this.versions.push(randomBytes(32))
        return [204, {}]
      case 'encrypt':
        this.seen.add(body.plaintext as string)
        return [200, { data: { ciphertext: this.#seal(Buffer.from(body.plaintext as string, 'base64')) } }]
      case 'decrypt': {
        const plain = this.#open(body.ciphertext as string)
        if (!plain) return [400, { errors: ['cipher: message authentication failed'] }]
        this.seen.add(plain.toString('base64'))
        return [200, { data: { plaintext: plain.toString('base64') } }]
      }
      case 'rewrap': {
        const plain = this.#open(body.ciphertext as string)
        if (!plain) return [400, { errors: ['invalid ciphertext'] }]
        return [200, { data: { ciphertext: this.#seal(plain) } }]
      }
    }
    return [404, {}]
  }

  #seal(plain: Buffer): string {
    const v = this.versions.length
    const iv = randomBytes(12)
    const c = createCipheriv('aes-256-gcm', this.versions[v - 1] as Buffer, iv)
    const ct = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()])
    return `vault:v${v}:${Buffer.concat([iv, ct]).toString('base64')}`
  }

  #open(ciphertext: string): Buffer | undefined {
    const m = /^vault:v(\d+):(.+)$/.exec(ciphertext)
    const key = m ? this.versions[Number(m[1]) - 1] : undefined
    if (!m || !key) return undefined
    const all = Buffer.from(m[2] as string, 'base64')
    try {
      const d = createDecipheriv('aes-256-gcm', key, all.subarray(0, 12))
      d.setAuthTag(all.subarray(all.length - 16))
      return Buffer.concat([d.update(all.subarray(12, all.length - 16)), d.final()])
    } catch {
      return undefined
    }
  }
}

const echo = defineAgent<{ note: string }>({
  id: 'echo',
  handler: async (ctx) => ({ echoed: ctx.data, secret: `${SECRET}-result` }),
})
const one = defineWorkflow<{ n: number }>({
  name: 'one',
  tasks: [{ key: 'a', agent: echo, data: (input) => ({ note: `${SECRET}-${input.n}` }) }],
})

describe('Vault transit key provider', async () => {
  const vault = new FakeVault()
  const address = await vault.start()
  afterAll(() => vault.close())
  const logLines: string[] = []
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _enc, done) {
        logLines.push(String(chunk))
        done()
      },
    }),
  )
  const provider = new VaultTransitProvider({ address, token: TOKEN, key: 'eq-kek' })
  const ring = KeyRing.of({ k1: KeyRing.generateKey() })
  const { engine, db } = await testEngine({
    agents: [echo],
    workflows: [one],
    log,
    config: { encryption: ring, keyProvider: provider },
  })
  await engine.createTenant({ id: 'acme' })
  await engine.startWorker({ agents: [echo] })
  const acme = await engine.tenant('acme')

  it('wraps data keys in Vault, and caches them: after the first workflow none calls Vault', async () => {
    const first = (await acme.startWorkflow('one', { n: 0 })).id
    expect((await settled(engine, 'acme', first)).status).toBe('completed')
    const [key] = await queryOnce(
      db.url,
      `SELECT kek, wrapped FROM equilateral.tenant_data_keys WHERE tenant_id = 'acme'`,
    )
    expect(key).toMatchObject({ kek: 'eq-kek:v1', wrapped: expect.stringMatching(/^vault:v1:/) })
    expect(vault.calls).toEqual(['encrypt', 'decrypt'])
    const before = vault.calls.length
    const ids: string[] = []
    for (let n = 1; n <= 10; n++) ids.push((await acme.startWorkflow('one', { n })).id)
    for (const id of ids) expect((await settled(engine, 'acme', id)).status).toBe('completed')
    expect((await acme.getWorkflow(ids[9] as string)).tasks[0]?.result).toEqual({
      echoed: { note: `${SECRET}-10` },
      secret: `${SECRET}-result`,
    })
    expect(vault.calls.length).toBe(before)
  })

  it('rotates the KEK in Vault and re-wraps the data keys without touching a payload', async () => {
    const payloads = `SELECT input::text AS i FROM equilateral.workflows WHERE tenant_id = 'acme' ORDER BY id`
    const before = await queryOnce(db.url, payloads)
    vault.versions.push(randomBytes(32)) // vault write -f transit/keys/eq-kek/rotate
    expect(await engine.keys.rewrap({ tenant: 'acme' })).toEqual([
      { tenant: 'acme', rewrapped: 1, current: 0 },
    ])
    const [key] = await queryOnce(
      db.url,
      `SELECT kek, wrapped FROM equilateral.tenant_data_keys WHERE tenant_id = 'acme'`,
    )
    expect(key).toMatchObject({ kek: 'eq-kek:v2', wrapped: expect.stringMatching(/^vault:v2:/) })
    expect(await queryOnce(db.url, payloads)).toEqual(before)
    // Version 1 retired (min_decryption_version): a fresh process still reads everything.
    vault.versions[0] = randomBytes(32)
    const fresh = new VaultTransitProvider({ address, token: TOKEN, key: 'eq-kek' })
    const wrapped = { kek: key?.kek as string, wrapped: key?.wrapped as string }
    const [row] = await queryOnce(
      db.url,
      `SELECT id FROM equilateral.tenant_data_keys WHERE tenant_id = 'acme'`,
    )
    expect(await fresh.unwrap(wrapped, `equilateral:acme:${row?.id}`)).toHaveLength(32)
  })

  it('fails with a typed error naming no key material, and logs none, when Vault refuses or is gone', async () => {
    const errors: unknown[] = []
    const attempt = async (p: VaultTransitProvider) => {
      const [key] = await queryOnce(
        db.url,
        `SELECT id, kek, wrapped FROM equilateral.tenant_data_keys WHERE tenant_id = 'acme'`,
      )
      try {
        await p.unwrap({ kek: key?.kek, wrapped: key?.wrapped }, `equilateral:acme:${key?.id}`)
      } catch (error) {
        errors.push(error)
        log.error({ err: error }, 'unwrap failed') // what a caller logging the error would write
      }
    }
    vault.failWith = 503
    await attempt(provider)
    vault.failWith = undefined
    await attempt(new VaultTransitProvider({ address, token: `${TOKEN}-revoked`, key: 'eq-kek' }))
    await attempt(new VaultTransitProvider({ address: 'http://127.0.0.1:9', token: TOKEN, key: 'eq-kek' }))
    // A new tenant whose key cannot be created while Vault is down: the start fails, typed.
    await engine.createTenant({ id: 'globex' })
    vault.failWith = 500
    const globex = await engine.tenant('globex')
    const refused = await globex.startWorkflow('one', { n: 1 }).catch((e: unknown) => e)
    vault.failWith = undefined
    errors.push(refused)
    log.error({ err: refused }, 'start failed')

    expect(errors.map((e) => (e as EncryptionError).code)).toEqual([
      'provider_unavailable',
      'unwrap_failed',
      'provider_unavailable',
      'provider_unavailable',
    ])
    for (const e of errors) expect(e).toBeInstanceOf(EncryptionError)
    const text = [
      ...errors.map((e) => `${(e as Error).message} ${(e as Error).stack} ${JSON.stringify(e)}`),
      ...logLines,
      JSON.stringify(provider),
      String(await engine.metrics.registry.metrics()),
    ].join('\n')
    expect(vault.seen.size).toBeGreaterThan(0)
    for (const b64 of vault.seen) {
      const bytes = Buffer.from(b64, 'base64')
      for (const form of [
        b64,
        bytes.toString('base64url'),
        bytes.toString('hex'),
        bytes.toString('latin1'),
      ]) {
        expect(text).not.toContain(form)
      }
    }
    expect(text).not.toContain(TOKEN)
    expect(logLines.some((l) => l.includes('unwrap failed'))).toBe(true)
  })
})
