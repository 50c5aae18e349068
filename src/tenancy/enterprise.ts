// Enterprise fan-out: one workflow type started across a set of tenants (each team a tenant), each
// with its own input, tracked as one enterprise run and consolidated once every tenant's workflow has
// finished, whether it completed or not.
//
// The run and its members are control rows (equilateral.enterprise_runs / enterprise_run_tenants):
// they name tenants and workflows and, once consolidated, hold the per-tenant results. They are not
// under row-level security, so nothing tenant-owned is read through them: every member's workflow
// (status, output, error) is read through that tenant's own handle, inside that tenant's scope.
//
// Forgery. The application role may write these tables and pgboss.job, so consolidation trusts
// only what it can check. start() signs the run (id, workflow type, member tenants) and each member
// (run, tenant, input) with a key derived from the encryption key ring, which the database never
// sees: a pass refuses a run whose signature does not verify (and stops its job chain), starts a
// member only with a valid signature, and reads a member's workflow only if, in the tenant's own
// scope, it is of the run's type and correlated with the run. Outputs in the summary are encrypted
// under each tenant's key context (`<tenant>:enterprise.output`), like other payloads. Without
// ENCRYPTION_KEYS there is no secret to sign with and nothing is encrypted (see
// docs/isolation-modes.md, "Enterprise fan-out").
//
// Durability. start() writes the run, its members (status 'starting') and the first consolidation
// job in one transaction, then starts each member's workflow with the idempotency key
// `enterprise:<runId>`. A crash anywhere after that commit loses nothing: the consolidation job
// (queue `eq/enterprise`, one chain of jobs per run) starts the members still 'starting' again, and
// the idempotency key makes a second start return the first workflow instead of creating another.
// Each pass of the job reads the members' workflows, records the ones that ended and, when all have,
// writes the summary and the run's final status with a conditional UPDATE (WHERE status = 'running'),
// so it happens once however many passes race. Until then the job sends its successor, startAfter a
// few seconds; the queue is `stately` with the run id as singleton key, so duplicates (a retried job,
// a resume scan) collapse to at most one waiting job per run.
//
// Size (over 400 lines): the orchestrator, and beside it the checks it runs (validation, signature,
// decryption of the summary) as plain functions, share the signing rules and the run's invariants
// described above. The member rows, reads of the members' workflows and the summary are in
// enterprise-members.ts.
import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { isUuid, UUID } from '../core/ids.ts'
import { assertStorableJson, canonicalJson, type Json } from '../core/json.ts'
import { taskData } from '../core/plan.ts'
import { ENTERPRISE_MEMBER_STATUSES, ENTERPRISE_RUN_STATUSES } from '../db/schema/values.ts'
import { APP_SCHEMA } from '../db/names.ts'
import { clientDb, type Db, withTransaction } from '../db/tx.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { Engine, TenantHandle } from '../engine.ts'
import { EquilateralError, InvalidInputError, NotFoundError, serializeError } from '../errors.ts'
import { assertTenantId } from './tenants.ts'
import { eachLimit } from '../core/each-limit.ts'
import { EnterpriseRunForgedError, MEMBERS, type MemberRecord, RunMembers } from './enterprise-members.ts'

export { EnterpriseRunForgedError } from './enterprise-members.ts'

/**
 * The consolidation queue. Agent queues are `eq.<agentId>`; agent ids cannot contain '/', so no
 * agent's queue can ever be this one.
 */
export const ENTERPRISE_QUEUE = 'eq/enterprise'

/** Most tenants one run may name (the run and its members are written in one transaction). */
export const MAX_ENTERPRISE_MEMBERS = 10_000

const RUNS = `${APP_SCHEMA}.enterprise_runs`

export type EnterpriseRunStatus = (typeof ENTERPRISE_RUN_STATUSES)[number]
export type EnterpriseMemberStatus = (typeof ENTERPRISE_MEMBER_STATUSES)[number]

/** Member statuses that no longer change. */
const TERMINAL: ReadonlySet<EnterpriseMemberStatus> = new Set([
  'completed',
  'failed',
  'cancelled',
  'rejected',
])

export interface EnterpriseMemberSpec {
  tenantId: string
  input?: Json
}

export interface EnterpriseStartOptions {
  /**
   * The run's id, chosen by the caller (a UUID). Starting again with the same id, workflow type and
   * members returns the existing run and starts only the members not started yet, so a caller that
   * crashed before learning the outcome can simply start again.
   */
  runId?: string
}

export interface EnterpriseStartResult {
  runId: string
  /** False when a run with the given runId already existed (see EnterpriseStartOptions.runId). */
  created: boolean
}

export interface EnterpriseMemberView {
  tenantId: string
  input: Json
  workflowId: string | null
  status: EnterpriseMemberStatus
  /** Why the member was rejected, or the error of its failed or cancelled workflow. */
  error: Json | null
  updatedAt: Date
}

export interface EnterpriseTenantResult {
  status: EnterpriseMemberStatus
  workflowId: string | null
  /** A completed workflow's output (results of its sink tasks), read in the tenant's scope. */
  output?: Record<string, Json>
  /** Why a member did not complete. */
  error?: Json | null
}

export interface EnterpriseSummary {
  total: number
  completed: number
  failed: number
  cancelled: number
  rejected: number
  tenants: Record<string, EnterpriseTenantResult>
}

export interface EnterpriseRunView {
  id: string
  workflowType: string
  status: EnterpriseRunStatus
  /** Set once, when every member has finished. */
  summary: EnterpriseSummary | null
  createdAt: Date
  completedAt: Date | null
  members: EnterpriseMemberView[]
}

export interface EnterpriseOrchestratorOptions {
  /** Time between consolidation passes of a running run (default 5 s). */
  checkIntervalMs?: number
  /** Members started or read at once by one pass (default 4). */
  concurrency?: number
}

export class EnterpriseRunConflictError extends EquilateralError {
  constructor(runId: string) {
    super(
      'idempotency_conflict',
      `enterprise run ${runId} already exists with a different workflow type or different members`,
    )
  }
}

/** What a run's signature covers: its id, workflow type and the member tenants, sorted. */
function runSigned(runId: string, workflowType: string, tenants: readonly string[]): string {
  return JSON.stringify([runId, workflowType, [...tenants].sort()])
}

/** What a member's signature covers: the run, the tenant and the input it is started with. */
function memberSigned(runId: string, tenantId: string, input: Json): string {
  return JSON.stringify([runId, tenantId, canonicalJson(input)])
}

export class EnterpriseTimeoutError extends EquilateralError {
  constructor(runId: string, timeoutMs: number) {
    super('timeout', `enterprise run ${runId} still running after ${timeoutMs} ms`)
  }
}

interface CheckJob {
  runId: string
}

export class EnterpriseOrchestrator {
  readonly #engine: Engine
  readonly #checkIntervalMs: number
  readonly #concurrency: number
  readonly #runMembers: RunMembers
  #queueReady: Promise<void> | null = null
  #workerId: string | null = null

  constructor(engine: Engine, options: EnterpriseOrchestratorOptions = {}) {
    this.#engine = engine
    this.#checkIntervalMs = options.checkIntervalMs ?? 5000
    this.#concurrency = options.concurrency ?? 4
    if (!(Number.isFinite(this.#checkIntervalMs) && this.#checkIntervalMs >= 0)) {
      throw new InvalidInputError('checkIntervalMs must be a non-negative number', '$.checkIntervalMs')
    }
    if (!(Number.isInteger(this.#concurrency) && this.#concurrency > 0)) {
      throw new InvalidInputError('concurrency must be a positive integer', '$.concurrency')
    }
    this.#runMembers = new RunMembers(engine, this.#concurrency)
  }

  /**
   * Starts `workflowType` for every member, in that member's tenant. Everything that can be refused
   * for the whole run (unknown type, no members, a tenant named twice, an input that cannot be
   * stored) is refused before anything is written. A tenant that is unknown or suspended is recorded
   * as 'rejected' with the reason; the other members start regardless.
   */
  async start(
    workflowType: string,
    members: readonly EnterpriseMemberSpec[],
    options: EnterpriseStartOptions = {},
  ): Promise<EnterpriseStartResult> {
    const rows = validateMembers(this.#engine, workflowType, members)
    if (options.runId !== undefined && !isUuid(options.runId)) {
      throw new InvalidInputError('runId must be a UUID', '$.runId')
    }
    // Lower case, as PostgreSQL prints a uuid: the id is also spelled into the members' idempotency
    // key and the job's singleton key, which must come out the same from every path.
    const runId = (options.runId ?? randomUUID()).toLowerCase()
    const ring = this.#engine.keyRing
    const runMac = ring.sign(
      'enterprise.run',
      runSigned(
        runId,
        workflowType,
        rows.map((r) => r.tenant_id),
      ),
    )
    const signed = rows.map((r) => ({
      ...r,
      mac: ring.sign('enterprise.member', memberSigned(runId, r.tenant_id, r.input)),
    }))
    await this.#ensureQueue()

    const created = await withTransaction(this.#engine.pool, (client) =>
      writeRun(client, { runId, workflowType, runMac, rows, signed }, (db) => this.#scheduleCheck(runId, db)),
    )

    const pending = (await this.#runMembers.records(runId)).filter((m) => m.status === 'starting')
    await eachLimit(pending, this.#concurrency, async (m) => {
      await this.#startMember(runId, workflowType, m).catch((error: unknown) => {
        // Not the member's fault (e.g. the database went away): the consolidation job tries again.
        this.#engine.log.warn(
          { err: error, runId, tenantId: m.tenantId },
          'enterprise member not started yet',
        )
      })
    })
    return { runId, created }
  }

  /** The run and its members, as recorded now. */
  async get(runId: string): Promise<EnterpriseRunView> {
    if (!UUID.test(runId)) throw new NotFoundError(`enterprise run ${runId}`)
    const { rows } = await this.#engine.pool.query(
      `SELECT id, workflow_type, status, summary, created_at, completed_at FROM ${RUNS} WHERE id = $1`,
      [runId],
    )
    const r = rows[0]
    if (!r) throw new NotFoundError(`enterprise run ${runId}`)
    return {
      id: r.id,
      workflowType: r.workflow_type,
      status: r.status,
      summary: decryptedSummary(this.#engine.keyRing, r.summary),
      createdAt: r.created_at,
      completedAt: r.completed_at,
      members: await this.#runMembers.list(runId),
    }
  }

  /**
   * One consolidation pass, here and now: starts the members still 'starting', reads each unfinished
   * member's workflow in its tenant's scope and records the ones that ended, and, when every member
   * has ended, writes the summary and the final status (once). Returns the run as it then stands.
   * Safe to run concurrently with itself and with start(), from any number of processes.
   */
  async checkRun(id: string): Promise<EnterpriseRunView> {
    const run = await this.get(id)
    if (run.status !== 'running') return run
    const runId = run.id // as stored (lower case), whatever case the caller used
    await assertSigned(this.#engine, runId, run.workflowType)
    const records = new Map((await this.#runMembers.records(runId)).map((m) => [m.tenantId, m]))
    // Outputs of the workflows this pass saw completed, so consolidation need not read them twice.
    const outputs = new Map<string, Record<string, Json>>()
    const open = run.members.filter((m) => !TERMINAL.has(m.status))
    await eachLimit(open, this.#concurrency, async (m) => {
      try {
        const started =
          m.status === 'starting'
            ? await this.#startMember(runId, run.workflowType, records.get(m.tenantId) ?? { ...m, mac: null })
            : m
        if (started.status === 'running' && started.workflowId) {
          await this.#runMembers.observe(
            runId,
            run.workflowType,
            started.tenantId,
            started.workflowId,
            outputs,
          )
        }
      } catch (error) {
        this.#engine.log.warn({ err: error, runId, tenantId: m.tenantId }, 'enterprise member check failed')
      }
    })

    const members = await this.#runMembers.list(runId)
    if (!members.every((m) => TERMINAL.has(m.status))) return { ...run, members }
    const summary = await this.#runMembers.summarise(runId, run.workflowType, members, outputs)
    if (!summary) return { ...run, members }
    const status: EnterpriseRunStatus =
      summary.completed === summary.total ? 'completed' : summary.completed === 0 ? 'failed' : 'partial'
    const { rowCount } = await this.#engine.pool.query(
      `UPDATE ${RUNS} SET status = $2, summary = $3::jsonb, completed_at = now() WHERE id = $1 AND status = 'running'`,
      [runId, status, JSON.stringify(summary)],
    )
    if (rowCount === 1) this.#engine.log.info({ runId, status, ...count(summary) }, 'enterprise run finished')
    return this.get(runId)
  }

  /** Polls the run until it is no longer running, and returns it. */
  async wait(
    runId: string,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<EnterpriseRunView> {
    const timeoutMs = options.timeoutMs ?? 60_000
    const intervalMs = options.intervalMs ?? 250
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const run = await this.get(runId)
      if (run.status !== 'running') return run
      if (Date.now() >= deadline) throw new EnterpriseTimeoutError(runId, timeoutMs)
      await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, deadline - Date.now() + 1)))
    }
  }

  /**
   * Runs consolidation passes in this process (any number of processes may). Also re-arms the pass
   * of every running run, so a run whose job chain was lost (e.g. pg-boss gave up retrying while
   * the database was unreachable) is picked up again; duplicates collapse on the run id.
   */
  async work(): Promise<void> {
    if (this.#workerId) return
    await this.#ensureQueue()
    const { rows } = await this.#engine.pool.query(`SELECT id FROM ${RUNS} WHERE status = 'running'`)
    for (const r of rows) await this.#scheduleCheck(r.id, undefined, 0)
    this.#workerId = await this.#engine.boss.work<CheckJob>(
      ENTERPRISE_QUEUE,
      {
        batchSize: 1,
        localConcurrency: this.#concurrency,
        pollingIntervalSeconds: Math.max(0.5, Math.min(this.#checkIntervalMs, 2000) / 1000),
      },
      async (jobs) => {
        for (const job of jobs) await this.#onCheckJob(job.data.runId)
      },
    )
  }

  /** Stops this process's consolidation worker (waiting for a pass in progress); runs go on elsewhere. */
  async stop(): Promise<void> {
    const id = this.#workerId
    if (!id) return
    this.#workerId = null
    await this.#engine.boss.offWork(ENTERPRISE_QUEUE, { id, wait: true })
  }

  async #onCheckJob(runId: string): Promise<void> {
    let status: EnterpriseRunStatus | 'gone' = 'running'
    try {
      status = (await this.checkRun(runId)).status
    } catch (error) {
      if (error instanceof NotFoundError) status = 'gone'
      else if (error instanceof EnterpriseRunForgedError) {
        status = 'gone'
        this.#engine.log.warn({ err: error, runId }, 'enterprise run refused')
      } else this.#engine.log.warn({ err: error, runId }, 'enterprise consolidation pass failed')
    }
    // If this send fails the handler throws and pg-boss retries the job, which sends it then.
    if (status === 'running') await this.#scheduleCheck(runId)
  }

  /**
   * Starts one member's workflow (or finds the one an earlier attempt started: same idempotency
   * key) and records it. A tenant that cannot take it (unknown, suspended, input refused) rejects
   * the member; anything else is thrown and left for the next pass.
   */
  async #startMember(runId: string, workflowType: string, m: MemberRecord): Promise<EnterpriseMemberView> {
    if (!this.#engine.keyRing.verify('enterprise.member', memberSigned(runId, m.tenantId, m.input), m.mac)) {
      // Written or altered by hand: its input is not what the caller of start() asked for.
      const refused = serializeError(new EnterpriseRunForgedError(runId))
      await this.#runMembers.set(runId, m.tenantId, 'rejected', null, refused)
      this.#engine.log.warn({ runId, tenantId: m.tenantId }, 'enterprise member not signed: not started')
      return { ...m, status: 'rejected', error: refused }
    }
    let handle: TenantHandle
    let workflowId: string
    try {
      handle = await this.#engine.tenant(m.tenantId)
      ;({ id: workflowId } = await handle.startWorkflow(workflowType, m.input, {
        idempotencyKey: `enterprise:${runId}`,
        correlationId: runId,
      }))
    } catch (error) {
      if (!rejects(error)) throw error
      const rejected = serializeError(error)
      await this.#runMembers.set(runId, m.tenantId, 'rejected', null, rejected)
      this.#engine.log.info({ runId, tenantId: m.tenantId, error: rejected }, 'enterprise member rejected')
      return { ...m, status: 'rejected', error: rejected }
    }
    await this.#runMembers.set(runId, m.tenantId, 'running', workflowId, null)
    return { ...m, status: 'running', workflowId }
  }

  /** Sends the run's next consolidation pass (in the caller's transaction when `db` is given). */
  async #scheduleCheck(runId: string, db?: Db, delayMs = this.#checkIntervalMs): Promise<void> {
    await this.#engine.boss.send(ENTERPRISE_QUEUE, { runId } satisfies CheckJob, {
      singletonKey: runId,
      ...(delayMs > 0 ? { startAfter: new Date(Date.now() + delayMs) } : {}),
      ...(db ? { db } : {}),
    })
  }

  /** Creates the consolidation queue once per process (idempotent across processes). */
  #ensureQueue(): Promise<void> {
    this.#queueReady ??= (async () => {
      const boss = this.#engine.boss
      if (await boss.getQueue(ENTERPRISE_QUEUE)) return
      try {
        await boss.createQueue(ENTERPRISE_QUEUE, {
          // One waiting and one active job per run (singleton key = run id).
          policy: 'stately',
          // A pass that crashed or could not re-arm itself is retried; passes are idempotent.
          retryLimit: 100,
          retryDelay: 5,
          retryBackoff: true,
          retryDelayMax: 300,
          expireInSeconds: 600,
          deleteAfterSeconds: 24 * 3600,
        })
      } catch (error) {
        // Another process created it between our read and our create.
        if (!(await boss.getQueue(ENTERPRISE_QUEUE))) throw error
      }
    })().catch((error: unknown) => {
      this.#queueReady = null
      throw error
    })
    return this.#queueReady
  }
}

/** Errors that mean this tenant will not take this workflow (as opposed to a passing failure). */
function rejects(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return (
    code === 'unknown_tenant' ||
    code === 'tenant_suspended' ||
    code === 'invalid_input' ||
    code === 'idempotency_conflict'
  )
}

function count(s: EnterpriseSummary) {
  return {
    total: s.total,
    completed: s.completed,
    failed: s.failed,
    cancelled: s.cancelled,
    rejected: s.rejected,
  }
}

/** The summary with each tenant's output decrypted (EncryptionError if one does not decrypt). */
function decryptedSummary(ring: KeyRing, summary: EnterpriseSummary | null): EnterpriseSummary | null {
  if (summary === null || typeof summary !== 'object' || typeof summary.tenants !== 'object') return summary
  const tenants: Record<string, EnterpriseTenantResult> = {}
  for (const [t, result] of Object.entries(summary.tenants)) {
    tenants[t] =
      result && typeof result === 'object' && result.output !== undefined
        ? {
            ...result,
            output: ring.decrypt(t, 'enterprise.output', result.output) as Record<string, Json>,
          }
        : result
  }
  return { ...summary, tenants }
}

/** Throws EnterpriseRunForgedError unless start() of this deployment signed the run as it stands. */
async function assertSigned(engine: Engine, runId: string, workflowType: string): Promise<void> {
  const { rows } = await engine.pool.query(
    `SELECT r.mac, array(SELECT tenant_id FROM ${MEMBERS} WHERE run_id = r.id) AS tenants
     FROM ${RUNS} r WHERE r.id = $1`,
    [runId],
  )
  const r = rows[0]
  if (!r || !engine.keyRing.verify('enterprise.run', runSigned(runId, workflowType, r.tenants), r.mac)) {
    throw new EnterpriseRunForgedError(runId)
  }
}

/**
 * Writes a run, its members ('starting') and its first consolidation job (`scheduleCheck`) in the
 * caller's transaction; false when a run with this id exists already and is the same run,
 * EnterpriseRunConflictError when it is a different one.
 */
async function writeRun(
  client: pg.PoolClient,
  run: {
    runId: string
    workflowType: string
    /** Null without ENCRYPTION_KEYS: nothing to sign with (see the top of this file). */
    runMac: string | null
    rows: readonly { tenant_id: string; input: Json }[]
    signed: readonly { tenant_id: string; input: Json; mac: string | null }[]
  },
  scheduleCheck: (db: Db) => Promise<void>,
): Promise<boolean> {
  const { runId, workflowType, runMac, rows, signed } = run
  const inserted = await client.query(
    `INSERT INTO ${RUNS} (id, workflow_type, status, mac) VALUES ($1, $2, 'running', $3) ON CONFLICT (id) DO NOTHING`,
    [runId, workflowType, runMac],
  )
  const payload = JSON.stringify(rows)
  if (inserted.rowCount === 0) {
    // Started before with this id: the same run again is fine, a different one is not.
    const { rows: same } = await client.query(
      `SELECT r.workflow_type,
         (SELECT count(*)::int FROM ${MEMBERS} e WHERE e.run_id = r.id) AS members,
         (SELECT count(*)::int FROM ${MEMBERS} e
            JOIN jsonb_to_recordset($2::jsonb) AS m(tenant_id text, input jsonb)
              ON m.tenant_id = e.tenant_id AND m.input IS NOT DISTINCT FROM e.input
          WHERE e.run_id = r.id) AS matching
       FROM ${RUNS} r WHERE r.id = $1`,
      [runId, payload],
    )
    const r = same[0]
    if (!r || r.workflow_type !== workflowType || r.members !== rows.length || r.matching !== rows.length) {
      throw new EnterpriseRunConflictError(runId)
    }
    return false
  }
  await client.query(
    `INSERT INTO ${MEMBERS} (run_id, tenant_id, input, status, mac)
     SELECT $1, m.tenant_id, m.input, 'starting', m.mac
     FROM jsonb_to_recordset($2::jsonb) AS m(tenant_id text, input jsonb, mac text)`,
    [runId, JSON.stringify(signed)],
  )
  // The first consolidation pass commits with the run: from here on, a crash of this process
  // leaves a job that finishes what this call started.
  await scheduleCheck(clientDb(client))
  return true
}

/** What start() refuses for the whole run, checked before anything is written; the rows to insert. */
function validateMembers(engine: Engine, workflowType: string, members: readonly EnterpriseMemberSpec[]) {
  const def = engine.workflow(workflowType)
  if (!Array.isArray(members) || members.length === 0) {
    throw new InvalidInputError('an enterprise run needs at least one tenant', '$.members')
  }
  if (members.length > MAX_ENTERPRISE_MEMBERS) {
    throw new InvalidInputError(
      `an enterprise run names at most ${MAX_ENTERPRISE_MEMBERS} tenants, not ${members.length}`,
      '$.members',
    )
  }
  const limits = engine.limits
  const seen = new Set<string>()
  return members.map((m, i) => {
    if (m === null || typeof m !== 'object') {
      throw new InvalidInputError(`$.members[${i}] is not an object`, `$.members[${i}]`)
    }
    assertTenantId(m.tenantId)
    if (seen.has(m.tenantId)) {
      throw new InvalidInputError(`tenant "${m.tenantId}" appears twice`, `$.members[${i}].tenantId`)
    }
    seen.add(m.tenantId)
    const input = m.input ?? null
    assertStorableJson(input, `$.members[${i}].input`, limits)
    // What startWorkflow would refuse for this input (task data computed from it), refused now.
    taskData(def, input, limits)
    return { tenant_id: m.tenantId, input }
  })
}
