// A connection that dies between two statements of a transaction (the server restarted, an admin
// terminated the backend) is an error of that transaction, never an uncaught exception: pg emits
// 'error' on a checked-out client, which would otherwise end the process.
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { withTenantTx, withTransaction } from '../../src/db/tx.ts'
import { createTestDatabase } from '../helpers/db.ts'

const db = await createTestDatabase()
const pool = new pg.Pool({ connectionString: db.url, max: 2 })
afterAll(async () => {
  await pool.end()
  await db.drop()
})

/** Terminates the backend of `pid` from another connection and waits for the drop to arrive. */
async function terminate(pid: number): Promise<void> {
  const admin = new pg.Client({ connectionString: db.url })
  await admin.connect()
  await admin.query('SELECT pg_terminate_backend($1)', [pid])
  await admin.end()
  await new Promise((r) => setTimeout(r, 200))
}

describe('connection lost inside a transaction', () => {
  const scope = { tenantId: 'acme', searchPath: 'equilateral', tier: 'standard' }

  it('fails the tenant transaction and discards the connection', async () => {
    const run = withTenantTx(pool, scope, async (tx) => {
      const { rows } = await tx.executeSql('SELECT pg_backend_pid() AS pid')
      await terminate(rows[0]?.pid as number)
      return tx.executeSql('SELECT 1')
    })
    await expect(run).rejects.toThrow(/terminat|not queryable|Connection/i)
    // the pool still serves: the dead connection was not handed out again
    await expect(withTransaction(pool, (c) => c.query('SELECT 1 AS ok'))).resolves.toMatchObject({
      rows: [{ ok: 1 }],
    })
  })

  it('fails a plain transaction the same way', async () => {
    const run = withTransaction(pool, async (c) => {
      const { rows } = await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
      await terminate(rows[0]?.pid as number)
      return c.query('SELECT 1')
    })
    await expect(run).rejects.toThrow(/terminat|not queryable|Connection/i)
    expect(pool.totalCount).toBeLessThanOrEqual(2)
  })
})
