// The test kit as a user gets it: `equilateral-agents/testing` imported by name from an installed
// package (this build compiled to JavaScript, with the package.json's `exports` map), by a plain
// .mjs test script outside this repository, run against a real database. It catches what the
// in-repo tests importing src/testing.ts cannot: a missing export entry, a declaration not emitted,
// a relative import the build did not rewrite.
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { createTestDatabase } from '../helpers/db.ts'
import { packedTarball } from '../helpers/package.ts'

const run = promisify(execFile)
const repo = path.resolve(import.meta.dirname, '../..')

const db = await createTestDatabase()
const dir = await mkdtemp(path.join(tmpdir(), 'eq-kit-consumer-'))
const pkg = path.join(dir, 'node_modules', 'equilateral-agents')
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
  await db.drop()
})

// What a user's own test would do: define an agent and an approval-gated workflow, approve it,
// and assert on the audit trail, all through the public entry points.
const CONSUMER = `
import { defineAgent, defineWorkflow } from 'equilateral-agents'
import { createTestKit } from 'equilateral-agents/testing'

const ship = defineAgent({ id: 'consumer-ship', handler: async (ctx) => ({ shipped: ctx.results.gate.approver }) })
const flow = defineWorkflow({
  name: 'consumer-release',
  tasks: [
    { key: 'gate', approval: { approvers: ['ana'], timeoutMs: 3600000 } },
    { key: 'ship', agent: ship, dependsOn: ['gate'] },
  ],
})
const kit = await createTestKit({ databaseUrl: process.env.DB_URL, agents: [ship], workflows: [flow] })
try {
  const { id } = await kit.start('consumer-release', null)
  await kit.waitFor(id, { taskWaiting: 'gate' })
  const timers = await kit.pendingTimers(id)
  await kit.approve(id, 'gate', { approver: 'ana' })
  const wf = await kit.waitFor(id, { status: 'completed' })
  const audit = await kit.audit(id)
  audit.expectSequence(['task_waiting:gate', 'approval_decided', 'task_completed:ship'])
  const chain = await kit.verifyAuditChain()
  console.log(JSON.stringify({ output: wf.output, timers: timers.map((t) => t.kind), chainOk: chain.ok }))
} finally {
  await kit.close()
}
`

// The package as npm would install it: the run's `npm pack` (test/helpers/package.ts), unpacked
// into node_modules; its dependencies are this repository's, as a hoisted install resolves them.
const tarball = await packedTarball()
await mkdir(pkg, { recursive: true })
await run('tar', ['-xzf', tarball, '-C', pkg, '--strip-components=1'])
await symlink(path.join(repo, 'node_modules'), path.join(pkg, 'node_modules'), 'dir')

describe('equilateral-agents/testing as an installed package', () => {
  it('runs a user’s plain JavaScript test through the package’s exports', async () => {
    await writeFile(path.join(dir, 'consumer.test.mjs'), CONSUMER)

    const { stdout } = await run(process.execPath, ['consumer.test.mjs'], {
      cwd: dir,
      env: { ...process.env, DB_URL: db.url },
      timeout: 60_000,
    })
    expect(JSON.parse(stdout.trim().split('\n').at(-1) ?? '')).toEqual({
      output: { ship: { shipped: 'ana' } }, // a workflow's output: its last tasks' results
      timers: ['wait-timeout'],
      chainOk: true,
    })
  })

  it('ships the equilateral command, which runs from the build', async () => {
    const bin = path.join(pkg, 'bin', 'equilateral.js')
    const { stdout } = await run(process.execPath, [bin, 'migrate', '--help'], { cwd: dir })
    expect(stdout).toMatch(/^Usage: equilateral migrate/m)
  })
})
