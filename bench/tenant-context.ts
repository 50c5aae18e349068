// The cost of the verified tenant context (drizzle/tenant/0016) on one connection, against the
// policy it replaced: rounds of N engine-like transactions (BEGIN and the scope, a CLAIM-shaped
// statement that updates a task joined with its workflow and appends an audit row, COMMIT), once
// with the verified policies and enter_tenant(), once with the policies rewritten to compare with
// app.tenant_id and the scope set by set_config, alternating. Reports the backend's CPU per
// transaction (from /proc, so the server must run on this machine) and the wall time.
// Usage: node bench/tenant-context.ts [admin database url] [transactions per round=2000] [rounds=3]
import { readFileSync } from 'node:fs'
import pg from 'pg'
import { migrate } from '../src/db/migrate.ts'
import { tenantCredential } from '../src/tenancy/tenant-context.ts'

const adminUrl = process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const N = Number(process.argv[3] ?? 2000)
const rounds = Number(process.argv[4] ?? 3)
const dbName = `eq_bench_tc_${process.pid}`
const TABLES = [
  'workflows',
  'agent_coordination',
  'agent_audit_log',
  'compliance_events',
  'agent_audit_seals',
  'workflow_events',
  'workflow_schedules',
  'agent_audit_redactions',
]

const admin = new pg.Client({ connectionString: adminUrl })
await admin.connect()
await admin.query(`CREATE DATABASE ${dbName}`)
const url = new URL(adminUrl)
url.pathname = `/${dbName}`
try {
  await migrate(url.href)
  const owner = new pg.Client({ connectionString: url.href })
  await owner.connect()
  const secret: Buffer = (await owner.query('SELECT secret FROM equilateral.tenant_context_key')).rows[0]
    .secret
  // Owner connection: superuser in this bench, so it bypasses the policies for the seed.
  await owner.query(`INSERT INTO equilateral.workflows (tenant_id, id, type, version, status, correlation_id, tasks_remaining)
    SELECT 't' || (g % 10), gen_random_uuid(), 'x', 1, 'running', 'c', 1 FROM generate_series(1, 10000) g`)
  await owner.query(`INSERT INTO equilateral.agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type,
      queue, status, max_attempts, deps_remaining, backoff_ms, backoff_max_ms, timeout_ms)
    SELECT tenant_id, gen_random_uuid(), id, 'a', 'noop', 't', 'q', 'queued', 3, 0, 1, 1, 1 FROM equilateral.workflows`)
  await owner.query('ANALYZE')
  const ids: string[] = (
    await owner.query(`SELECT id FROM equilateral.agent_coordination WHERE tenant_id = 't1'`)
  ).rows.map((r) => r.id)
  const policies = async (expression: string) => {
    for (const t of TABLES) {
      await owner.query(
        `ALTER POLICY tenant_isolation ON equilateral.${t} USING (${expression}) WITH CHECK (${expression})`,
      )
    }
  }

  const c = new pg.Client({ connectionString: `${url.href}?options=-c%20role%3Dequilateral_app` })
  await c.connect()
  const pid: number = (await c.query('SELECT pg_backend_pid() AS p')).rows[0].p
  const cpuMs = () => {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) * 10 // clock ticks of 10 ms
  }
  const CLAIM = `WITH c AS (UPDATE agent_coordination t SET attempt = t.attempt + 1 FROM workflows w
      WHERE t.tenant_id = $1 AND t.id = $2 AND w.tenant_id = $1 AND w.id = t.workflow_id RETURNING t.*),
    a AS (INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data)
      SELECT tenant_id, workflow_id, id, agent_id, 'task_started', '{}' FROM c RETURNING id)
    SELECT c.id, a.id AS audit FROM c, a`
  const transactions = async (verified: boolean, n: number) => {
    for (let i = 0; i < n; i++) {
      if (verified) {
        // As src/db/tx.ts beginScoped: BEGIN and the scope written together.
        ;(c as pg.Client & { pipeline: boolean }).pipeline = true
        await Promise.all([
          c.query('BEGIN'),
          c.query({
            name: 'scope_verified',
            text: `SELECT equilateral.enter_tenant($1, $2), set_config('search_path', $3, true),
              set_config('plan_cache_mode', 'force_generic_plan', true)`,
            values: ['t1', tenantCredential(secret, 't1'), 'equilateral'],
          }),
        ])
        ;(c as pg.Client & { pipeline: boolean }).pipeline = false
      } else {
        await c.query(`BEGIN; SELECT set_config('app.tenant_id', 't1', true), set_config('search_path', 'equilateral', true),
          set_config('plan_cache_mode', 'force_generic_plan', true)`)
      }
      const r = await c.query({ name: `claim_${verified}`, text: CLAIM, values: ['t1', ids[i % ids.length]] })
      if (r.rowCount !== 1) throw new Error('the statement saw nothing: the scope did not take')
      await c.query('COMMIT')
    }
  }
  const VERIFIED = 'tenant_id = (SELECT equilateral.current_tenant())'
  const SETTING = `tenant_id = NULLIF(current_setting('app.tenant_id', true), '')`
  const results: Record<string, { cpuMsPerTx: number; wallMsPerTx: number }[]> = { verified: [], setting: [] }
  for (let round = 0; round < rounds; round++) {
    for (const verified of [true, false]) {
      await policies(verified ? VERIFIED : SETTING)
      await transactions(verified, 100) // warm: plans, plpgsql compiled
      const c0 = cpuMs()
      const t0 = performance.now()
      await transactions(verified, N)
      results[verified ? 'verified' : 'setting']!.push({
        cpuMsPerTx: +((cpuMs() - c0) / N).toFixed(3),
        wallMsPerTx: +((performance.now() - t0) / N).toFixed(3),
      })
    }
  }
  const plan = async () => {
    await c.query('BEGIN')
    await c.query(`SELECT equilateral.enter_tenant($1, $2), set_config('search_path', 'equilateral', true)`, [
      't1',
      tenantCredential(secret, 't1'),
    ])
    const { rows } = await c.query(
      `EXPLAIN (ANALYZE, COSTS OFF) ${CLAIM.replace('$1', "'t1'").replaceAll('$1', "'t1'").replace('$2', `'${ids[0]}'`)}`,
    )
    await c.query('ROLLBACK')
    return rows
      .map((r) => r['QUERY PLAN'] as string)
      .filter((l) => /InitPlan|Result \(actual|Execution/.test(l))
  }
  await policies(VERIFIED)
  console.log(
    JSON.stringify({ transactionsPerRound: N, rounds, ...results, verifiedPlan: await plan() }, null, 2),
  )
  await c.end()
  await owner.end()
} finally {
  await admin.query(`DROP DATABASE ${dbName} WITH (FORCE)`)
  await admin.end()
}
