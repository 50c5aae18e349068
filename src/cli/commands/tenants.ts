// `tenant ...`: create, list, suspend, resume, rotate keys, set compliance profiles, move tenants.
import type { Command } from 'commander'
import { parseProfile } from '../arguments.ts'
import { EXIT_USAGE } from '../errors.ts'
import { print, withEngine } from '../shared.ts'

export function register(program: Command): void {
  const tenant = program
    .command('tenant')
    .description('manage tenants (uses MIGRATION_DATABASE_URL, the owner, when set)')
  tenant
    .command('create')
    .argument('<id>', 'tenant id (letters, digits, _ and -)')
    .description(
      'create a tenant and print its API key (shown once); TENANT_ISOLATION_MODE decides where its tables go',
    )
    .option('--name <name>', 'display name')
    .option('--tier <tier>', 'fairness tier (see TENANT_CONCURRENCY_TIERS)', 'standard')
    .option(
      '--compliance <json>',
      'compliance profile as JSON or @file, e.g. \'{"GDPR":{"retentionDays":30},"dataRetentionDays":90}\'',
    )
    .option(
      '--server <name>',
      'database-per-tenant: the TENANT_SERVERS server for its database (default: the one with the fewest tenants); run again to finish an interrupted creation',
    )
    .action(
      async (id: string, opts: { name?: string; tier: string; compliance?: string; server?: string }) => {
        const complianceProfile = opts.compliance ? await parseProfile(opts.compliance) : undefined
        await withEngine(undefined, async (engine) => {
          print(
            await engine.createTenant({
              id,
              tier: opts.tier,
              ...(opts.server ? { server: opts.server } : {}),
              ...(opts.name ? { name: opts.name } : {}),
              ...(complianceProfile ? { complianceProfile } : {}),
            }),
          )
        })
      },
    )
  tenant
    .command('list')
    .description('list tenants with their status, tier, schema or database')
    .action(async () => {
      await withEngine(undefined, async (engine) => print(await engine.listTenants()))
    })
  tenant
    .command('suspend')
    .argument('<id>', 'tenant id')
    .description("refuse the tenant's key and handles; its queued work waits until it is resumed")
    .action(async (id: string) => {
      await withEngine(undefined, async (engine) => {
        await engine.suspendTenant(id)
        print({ id, status: 'suspended' })
      })
    })
  tenant
    .command('resume')
    .argument('<id>', 'tenant id')
    .description('re-activate a suspended tenant')
    .action(async (id: string) => {
      await withEngine(undefined, async (engine) => {
        await engine.resumeTenant(id)
        print({ id, status: 'active' })
      })
    })
  tenant
    .command('rotate-key')
    .argument('<id>', 'tenant id')
    .description('issue a new API key (printed once); the old one stops working at once')
    .action(async (id: string) => {
      await withEngine(undefined, async (engine) => print({ id, apiKey: await engine.rotateApiKey(id) }))
    })
  tenant
    .command('compliance')
    .argument('<id>', 'tenant id')
    .argument('<profile>', 'the compliance profile as JSON, or @file.json')
    .description(
      "replace the tenant's compliance profile (JSON or @file): regimes GDPR, SOX, HIPAA with retentionDays, dataRetentionDays, auditRetentionDays",
    )
    .action(async (id: string, raw: string) => {
      const profile = await parseProfile(raw)
      await withEngine(undefined, async (engine) =>
        print({ id, complianceProfile: await engine.setComplianceProfile(id, profile) }),
      )
    })
  tenant
    .command('move')
    .argument('<id>', 'tenant id')
    .description(
      "database-per-tenant: check that a copy of a suspended, drained tenant's database holds everything, then switch the tenant to it (docs/moving-tenants.md); exit code 2 when refused",
    )
    .requiredOption(
      '--to <server[/database]>',
      'the copy: a TENANT_SERVERS name, and the database on it (default: the name the database has now)',
    )
    .option(
      '--check',
      'switch nothing: print the drain status and every difference; exit code 2 when not ready',
    )
    .option(
      '--force',
      'move although tasks are still marked running (only when their worker is gone for good)',
    )
    .action(async (id: string, opts: { to: string; check?: boolean; force?: boolean }) => {
      const { parseMoveTarget } = await import('../../placement/move.ts')
      const to = parseMoveTarget(opts.to)
      await withEngine(undefined, async (engine) => {
        const report = await engine.moveTenant(id, to, { force: !!opts.force, check: !!opts.check })
        print(report)
        for (const line of report.problems) process.stderr.write(`not ready: ${line}\n`)
        for (const line of report.next) process.stderr.write(`next: ${line}\n`)
        if (report.problems.length > 0) process.exitCode = EXIT_USAGE
      })
    })
}
