// The audit trail and personal data: `audit seal|checkpoint|verify`, `retention purge`, `erase`.
import { readFile } from 'node:fs/promises'
import type { Command } from 'commander'
import { positiveInt } from '../arguments.ts'
import { print, printDocument, withEngine } from '../shared.ts'

export function register(program: Command): void {
  const audit = program.command('audit').description('the tamper-evident audit trail')
  audit
    .command('seal')
    .description("seal every active tenant's new audit rows into its hash chain (the sweeper does this too)")
    .action(async () => {
      await withEngine(undefined, async (engine) => print(await engine.sealAudit()))
    })
  audit
    .command('checkpoint')
    .description(
      "print every active tenant's audit chain head, signed, as JSON: keep it outside the database for `audit verify --against`",
    )
    .action(async () => {
      await withEngine(undefined, async (engine) => printDocument(await engine.auditCheckpoint()))
    })
  audit
    .command('verify')
    .description(
      'recompute the audit hash chain and name every row or block altered, deleted, inserted out of band, redacted without a record or purged out of order or early',
    )
    .option('--tenant <id>', 'one tenant (default: every active tenant)')
    .option(
      '--against <file>',
      'a checkpoint `audit checkpoint` printed earlier: each tenant head in it must still have its hash',
    )
    .action(async (opts: { tenant?: string; against?: string }) => {
      await withEngine(undefined, async (engine) => {
        const { readCheckpoint } = await import('../../audit/checkpoint.ts')
        const against =
          opts.against === undefined
            ? undefined
            : readCheckpoint(engine.keyRing, await readFile(opts.against, 'utf8'))
        const reports = await engine.verifyAudit(opts.tenant, against ? { against } : {})
        for (const r of reports) {
          const lines = r.ok
            ? [
                `ok        ${r.tenantId}: ${r.rows} rows in ${r.blocks} blocks (${r.redacted} redacted, ${r.purgedBlocks} blocks purged, ${r.unsealed} not sealed yet)`,
              ]
            : r.problems.map((p) => `TAMPERED  ${r.tenantId}: ${p.message} [${p.kind}, block ${p.blockNo}]`)
          process.stdout.write(lines.map((l) => `${l}\n`).join(''))
        }
        if (reports.some((r) => !r.ok)) process.exitCode = 1
      })
    })

  const retention = program
    .command('retention')
    .description(
      'retention of coordination data, audit rows and compliance events (MAINTENANCE_DATABASE_URL, else the owner)',
    )
  retention
    .command('purge')
    .description(
      "purge, for every tenant, what is past its compliance profile's retention, in bounded batches, recording a purge compliance event",
    )
    .option('--batch-size <n>', 'rows or sealed blocks per statement (default 500)', (v) => positiveInt(v))
    .option('--max-batches <n>', 'batches per tenant in this run (default 100)', (v) => positiveInt(v))
    .action(async (opts: { batchSize?: number; maxBatches?: number }) => {
      await withEngine(undefined, async (engine) =>
        print(
          await engine.purgeExpired({
            ...(opts.batchSize ? { batchSize: opts.batchSize } : {}),
            ...(opts.maxBatches ? { maxBatches: opts.maxBatches } : {}),
          }),
        ),
      )
    })

  program
    .command('erase')
    .description(
      "GDPR erasure: cancel, then erase the personal data of a data subject's workflows (--subject) or of a whole tenant, keeping the audit chain verifiable; records a deletion compliance event (MAINTENANCE_DATABASE_URL, else the owner)",
    )
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--subject <key>', 'the subject key the workflows were started with (default: the whole tenant)')
    .action(async (opts: { tenant: string; subject?: string }) => {
      await withEngine(undefined, async (engine) =>
        print(
          opts.subject !== undefined
            ? await engine.eraseSubject(opts.tenant, opts.subject)
            : await engine.eraseTenantData(opts.tenant),
        ),
      )
    })
}
