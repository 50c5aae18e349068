// CLI of per-tenant data keys (issue 25): `keys rotate` (a tenant's data key, then its values moved
// under the new one), `keys rewrap` (KEK rotation: data keys re-wrapped, no payload rewritten), and
// `erase --crypto` (crypto-erasure: the data keys destroyed). Registered from main.ts (GROUPS),
// after the compliance group, whose `erase` it extends.
import type { Command } from 'commander'
import { positiveInt } from '../arguments.ts'
import { print, withEngine } from '../shared.ts'

export function register(program: Command): void {
  const keys = program
    .command('keys')
    .description(
      'per-tenant data keys (DATA_KEYS=per-tenant): rotation of a data key, re-wrap under a new KEK',
    )
  keys
    .command('rotate')
    .description(
      "give the tenant a new data key (the current one retired, still read) and re-encrypt the tenant's values under it, online and resumable (run `reencrypt --tenant` to resume)",
    )
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--batch <n>', 'rows per transaction (default 500)', (v) => positiveInt(v))
    .action(async (opts: { tenant: string; batch?: number }) => {
      await withEngine(undefined, async (engine) =>
        print(
          await engine.reencrypt({
            tenant: opts.tenant,
            rotateDataKey: true,
            ...(opts.batch ? { batchSize: opts.batch } : {}),
          }),
        ),
      )
    })
  keys
    .command('rewrap')
    .description(
      "KEK rotation: wrap every data key again under the key provider's current key-encryption key (no payload is rewritten)",
    )
    .option('--tenant <id>', 'one tenant (default: every tenant, suspended ones too)')
    .action(async (opts: { tenant?: string }) => {
      await withEngine(undefined, async (engine) =>
        print(await engine.keys.rewrap(opts.tenant === undefined ? {} : { tenant: opts.tenant })),
      )
    })

  // `erase` is declared in main.ts; --crypto is added to it here, with the action covering both.
  const erase = program.commands.find((c) => c.name() === 'erase')
  if (!erase) throw new Error('registerKeyCommands: register after the erase command')
  erase
    .option(
      '--crypto',
      "crypto-erasure: destroy the subject's (or the tenant's) data keys, so every copy of its encrypted values, backups included, is unreadable; recorded as a deletion compliance event (DATA_KEYS=per-tenant)",
    )
    .action(async (opts: { tenant: string; subject?: string; crypto?: boolean }) => {
      await withEngine(undefined, async (engine) =>
        print(
          opts.crypto
            ? await engine.cryptoErase(opts.tenant, opts.subject)
            : opts.subject !== undefined
              ? await engine.eraseSubject(opts.tenant, opts.subject)
              : await engine.eraseTenantData(opts.tenant),
        ),
      )
    })
}
