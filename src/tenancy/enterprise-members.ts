// An enterprise run's members as stored (src/tenancy/enterprise.ts runs the orchestration): their
// records, reading each member's workflow in its own tenant's scope, and the consolidated summary.
// Split from the orchestrator so each class keeps one job; the orchestrator owns the run, this the
// member rows and what is read through the tenants' handles.
import { eachLimit } from '../core/each-limit.ts'
import type { Json } from '../core/json.ts'
import { APP_SCHEMA } from '../db/names.ts'
import type { Engine, TenantHandle, WorkflowView } from '../engine.ts'
import { EquilateralError, NotFoundError, serializeError } from '../errors.ts'
import type {
  EnterpriseMemberStatus,
  EnterpriseMemberView,
  EnterpriseSummary,
  EnterpriseTenantResult,
} from './enterprise.ts'

export const MEMBERS = `${APP_SCHEMA}.enterprise_run_tenants`

export interface MemberRecord extends EnterpriseMemberView {
  mac: string | null
}

/** A run's records were not written by start() of this deployment (forged, or altered by hand). */
export class EnterpriseRunForgedError extends EquilateralError {
  constructor(runId: string) {
    super(
      'invalid_signature',
      `enterprise run ${runId} is not signed by this deployment's keys: refused (written or altered outside start())`,
    )
  }
}

export class RunMembers {
  readonly #engine: Engine
  readonly #concurrency: number

  constructor(engine: Engine, concurrency: number) {
    this.#engine = engine
    this.#concurrency = concurrency
  }

  /** Reads a member's workflow in its tenant's scope and records it if it has ended. */
  async observe(
    runId: string,
    workflowType: string,
    tenantId: string,
    workflowId: string,
    outputs: Map<string, Record<string, Json>>,
  ): Promise<void> {
    const handle = await this.readable(tenantId)
    if (!handle) return
    let wf: WorkflowView | null
    try {
      wf = await this.ownWorkflow(handle, runId, workflowType, workflowId)
    } catch (error) {
      // The workflow is gone from the tenant (deleted by retention or by hand): it will not finish.
      if (!(error instanceof NotFoundError)) throw error
      await this.set(runId, tenantId, 'failed', null, serializeError(error))
      return
    }
    if (!wf) {
      await this.set(runId, tenantId, 'failed', null, serializeError(new EnterpriseRunForgedError(runId)))
      return
    }
    if (wf.status === 'running') return
    if (wf.status === 'completed') outputs.set(tenantId, wf.output)
    await this.set(runId, tenantId, wf.status, null, wf.status === 'completed' ? null : wf.error)
  }

  /**
   * The consolidated result of a run whose members have all ended, or null if a completed member's
   * output cannot be read now (its tenant is suspended): the run then waits rather than consolidating
   * without it.
   */
  async summarise(
    runId: string,
    workflowType: string,
    members: EnterpriseMemberView[],
    outputs: Map<string, Record<string, Json>>,
  ): Promise<EnterpriseSummary | null> {
    const results = new Map<string, EnterpriseTenantResult>()
    let complete = true
    await eachLimit(members, this.#concurrency, async (m) => {
      if (m.status !== 'completed') {
        results.set(m.tenantId, { status: m.status, workflowId: m.workflowId, error: m.error })
        return
      }
      let output = outputs.get(m.tenantId)
      if (!output) {
        const handle = await this.readable(m.tenantId)
        if (!handle || !m.workflowId) {
          complete = false
          return
        }
        try {
          const wf = await this.ownWorkflow(handle, runId, workflowType, m.workflowId)
          if (!wf) {
            results.set(m.tenantId, {
              status: m.status,
              workflowId: m.workflowId,
              error: serializeError(new EnterpriseRunForgedError(runId)),
            })
            return
          }
          output = wf.output
        } catch (error) {
          // Completed, then deleted before consolidation (retention, by hand): say so, keep the status.
          if (!(error instanceof NotFoundError)) throw error
          results.set(m.tenantId, {
            status: 'completed',
            workflowId: m.workflowId,
            error: serializeError(error),
          })
          return
        }
      }
      // Encrypted like the tenant's other payloads; get() decrypts it.
      const sealed = this.#engine.keyRing.encrypt(m.tenantId, 'enterprise.output', output)
      results.set(m.tenantId, {
        status: 'completed',
        workflowId: m.workflowId,
        output: sealed as Record<string, Json>,
      })
    })
    if (!complete) {
      this.#engine.log.info({ runId }, 'enterprise run waits to read the output of a suspended tenant')
      return null
    }
    const summary: EnterpriseSummary = {
      total: members.length,
      completed: 0,
      failed: 0,
      cancelled: 0,
      rejected: 0,
      // Member order (tenant id), whatever order the reads finished in.
      tenants: Object.fromEntries(
        members.map((m) => [m.tenantId, results.get(m.tenantId) as EnterpriseTenantResult]),
      ),
    }
    for (const m of members) {
      if (
        m.status === 'completed' ||
        m.status === 'failed' ||
        m.status === 'cancelled' ||
        m.status === 'rejected'
      )
        summary[m.status]++
    }
    return summary
  }

  /** The tenant's handle, or null while the tenant is suspended (its workflows wait, and so do we). */
  async readable(tenantId: string): Promise<TenantHandle | null> {
    try {
      return await this.#engine.tenant(tenantId)
    } catch (error) {
      if ((error as { code?: unknown }).code === 'tenant_suspended') return null
      throw error
    }
  }

  /** Records a member's progress; a member that has ended is never changed again. */
  async set(
    runId: string,
    tenantId: string,
    status: EnterpriseMemberStatus,
    workflowId: string | null,
    error: Json | null,
  ): Promise<void> {
    await this.#engine.pool.query(
      `UPDATE ${MEMBERS} SET status = $3, workflow_id = COALESCE($4::uuid, workflow_id), error = $5::jsonb,
         updated_at = now()
       WHERE run_id = $1 AND tenant_id = $2 AND status IN ('starting', 'running')`,
      [runId, tenantId, status, workflowId, error === null ? null : JSON.stringify(error)],
    )
  }

  async list(runId: string): Promise<EnterpriseMemberView[]> {
    return (await this.records(runId)).map(({ mac: _, ...view }) => view)
  }

  /** The members as stored, with their signatures. */
  async records(runId: string): Promise<MemberRecord[]> {
    const { rows } = await this.#engine.pool.query(
      `SELECT tenant_id, input, workflow_id, status, error, updated_at, mac FROM ${MEMBERS}
       WHERE run_id = $1 ORDER BY tenant_id`,
      [runId],
    )
    return rows.map((r) => ({
      tenantId: r.tenant_id,
      input: r.input,
      workflowId: r.workflow_id,
      status: r.status,
      error: r.error,
      updatedAt: r.updated_at,
      mac: r.mac,
    }))
  }

  /** The member's workflow if, in its tenant's scope, it is this run's; null if it is not. */
  async ownWorkflow(
    handle: TenantHandle,
    runId: string,
    workflowType: string,
    workflowId: string,
  ): Promise<WorkflowView | null> {
    const wf = await handle.getWorkflow(workflowId)
    if (wf.correlationId === runId && wf.type === workflowType) return wf
    this.#engine.log.warn(
      { runId, tenantId: handle.scope.tenantId, workflowId },
      'enterprise member names a workflow that is not this run’s: not read',
    )
    return null
  }
}
