// result() in each isolation mode: the NOTIFY of a workflow's end reaches the waiter whether the
// tenant's tables are in the shared schema, a schema of its own, or a database of its own (where
// the LISTEN connection is on the tenant's database), and a tenant never gets another's result.
import { describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow, type Json, NotFoundError } from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const gates = new Map<string, (v: Json) => void>()
const gate = defineAgent({
  id: 'modes-gate',
  handler: (ctx) =>
    new Promise<Json>((resolve, reject) => {
      gates.set(ctx.workflowId, resolve)
      ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))
    }),
})
const held = defineWorkflow({ name: 'held', tasks: [{ key: 'gate', agent: gate }] })

const MODES: IsolationMode[] = ['row-level', 'schema-per-tenant', 'database-per-tenant']
const engines = await Promise.all(
  MODES.map(async (mode) => {
    const { engine, db } = await testEngine({
      agents: [gate],
      workflows: [held],
      // Only a notification can end a wait while the LISTEN connection is up.
      config: { isolationMode: mode, resultRecheckMs: 2_000_000_000 },
    })
    await engine.createTenant({ id: 'north' })
    await engine.createTenant({ id: 'south' })
    await engine.startWorker()
    return { mode, engine, db }
  }),
)

describe.each(engines)('result() with $mode', ({ mode, engine, db }) => {
  it("is woken by the workflow's end, and another tenant's id is not found", async () => {
    const north = await engine.tenant('north')
    const south = await engine.tenant('south')
    const run = await north.startWorkflow('held', null)
    const result = run.result()
    const open = await eventually(() => gates.get(run.id))
    await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
    const [own] = await queryOnce<{ database_name: string | null }>(
      db.url,
      'SELECT database_name FROM equilateral.tenants WHERE id = $1',
      ['north'],
    )
    const control = new URL(db.url).pathname.slice(1)
    // database-per-tenant: on the tenant's database; otherwise on the control database.
    const listening = await queryOnce<{ datname: string }>(
      db.url,
      `SELECT datname FROM pg_stat_activity
       WHERE application_name = 'equilateral-results' AND datname = ANY($1::text[])`,
      [[control, own?.database_name ?? control]],
    )
    expect(listening.map((l) => l.datname)).toEqual([
      mode === 'database-per-tenant' ? own?.database_name : control,
    ])
    await expect(south.result(run.id, { timeoutMs: 100 })).rejects.toBeInstanceOf(NotFoundError)
    open({ mode })
    await expect(result).resolves.toEqual({ gate: { mode } })
  })
})
