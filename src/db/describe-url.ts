// How a connection URL is named in logs and errors: never with its user or password.

/** `host:port/db` of a connection URL, without user or password. */
export function describeUrl(url: string): string {
  try {
    const parsed = new URL(url)
    const database = decodeURIComponent(parsed.pathname.replace(/^\//, '')) || '(default database)'
    return `${parsed.hostname || 'localhost'}:${parsed.port || 5432}/${database}`
  } catch {
    return 'not a URL, not shown'
  }
}
