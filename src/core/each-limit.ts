// Bounded concurrency over a list, for maintenance that walks many tenants or databases.

/** Runs `fn` over the items, at most `limit` at a time (in item order as lanes free up). */
export async function eachLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0
  const lane = async () => {
    while (next < items.length) await fn(items[next++] as T)
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane))
}
