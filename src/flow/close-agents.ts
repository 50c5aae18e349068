// Shutdown, last step for agents: each agent's own `close` hook (defineAgent), run once when the
// engine closes, after its workers stopped, so that what an agent module opened (a pool, a timer)
// does not keep the process alive after SIGTERM. A hook that throws is logged; one that takes longer
// than the bound is logged and left behind: shutdown goes on either way.
import type { Logger } from 'pino'
import type { AgentDefinition } from '../core/definition.ts'

export async function closeAgents(
  agents: Iterable<AgentDefinition<any, any>>,
  options: { timeoutMs: number; log: Logger },
): Promise<void> {
  // One function shared by several agents (or versions of one) closes what they share: once.
  const hooks = new Map<() => void | Promise<void>, string[]>()
  for (const a of agents) {
    if (!a.close) continue
    const names = hooks.get(a.close) ?? []
    if (names.length === 0) hooks.set(a.close, names)
    names.push(a.version === 1 ? a.id : `${a.id}@${a.version}`)
  }
  await Promise.all(
    [...hooks].map(async ([close, names]) => {
      const log = options.log.child({ agents: names })
      let timer: NodeJS.Timeout | undefined
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), options.timeoutMs)
      })
      const closed = (async () => close())().then(
        () => 'closed' as const,
        (error: unknown) => {
          log.error({ err: error }, 'agent close hook failed')
          return 'failed' as const
        },
      )
      const outcome = await Promise.race([closed, timedOut])
      clearTimeout(timer)
      if (outcome === 'timeout') {
        log.warn(
          { timeoutMs: options.timeoutMs },
          'agent close hook still running after SHUTDOWN_GRACE_MS; shutting down without waiting for it',
        )
      }
    }),
  )
}
