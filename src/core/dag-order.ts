// The order people read a workflow's tasks in: every task after the tasks it depends on, and among
// tasks free to come next, the one listed first (creation order, so a definition's tasks come before
// the tasks an agent spawned later). Pure; a dependency on a key that is not in the list is ignored.

export function dagOrder<T extends { key: string; dependsOn: readonly string[] }>(tasks: readonly T[]): T[] {
  const index = new Map(tasks.map((t, i) => [t.key, i]))
  const remaining = tasks.map((t) => t.dependsOn.filter((k) => index.has(k) && k !== t.key).length)
  const dependents = tasks.map(() => [] as number[])
  tasks.forEach((t, i) => {
    for (const k of t.dependsOn) {
      const parent = index.get(k)
      if (parent !== undefined && parent !== i) dependents[parent]!.push(i)
    }
  })
  const ordered: T[] = []
  const placed = new Set<number>()
  // Few tasks per workflow: a scan for the first free task each step keeps ties in listed order.
  while (ordered.length < tasks.length) {
    let next = remaining.findIndex((n, i) => n === 0 && !placed.has(i))
    // A cycle (impossible for a validated definition): the rest in listed order.
    if (next === -1) next = tasks.findIndex((_, i) => !placed.has(i))
    placed.add(next)
    ordered.push(tasks[next]!)
    for (const d of dependents[next]!) remaining[d]!--
  }
  return ordered
}
