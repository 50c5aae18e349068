// Which PostgreSQL server the test suite runs against. Kept free of side effects so it can be tested.

export type ServerSource = 'env' | 'container' | 'embedded'

export type ServerChoice = { source: 'env'; url: string } | { source: 'container' } | { source: 'embedded' }

export interface SelectServerOptions {
  /** Probes for a Docker engine; only called when TEST_DATABASE_URL is not set. */
  dockerAvailable: () => boolean | Promise<boolean>
}

/**
 * In order: TEST_DATABASE_URL (an existing server the suite may create and drop databases on),
 * else a testcontainers PostgreSQL when a Docker engine answers, else an embedded PostgreSQL.
 * DATABASE_URL is deliberately ignored: it names the app's own database, not a test server.
 */
export async function selectServer(
  env: NodeJS.ProcessEnv,
  options: SelectServerOptions,
): Promise<ServerChoice> {
  const url = env.TEST_DATABASE_URL?.trim()
  if (url) return { source: 'env', url }
  if (await options.dockerAvailable()) return { source: 'container' }
  return { source: 'embedded' }
}
