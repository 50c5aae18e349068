// The recovery benchmark's agent and workflow (bench/recovery.ts).
import { defineAgent, defineWorkflow } from '../src/index.ts'

/** Attempt 1 runs until aborted (its process is killed under it); the restarted attempt returns. */
export const recoveryAgent = defineAgent({
  id: 'bench-recovery',
  handler: async (ctx) => {
    if (ctx.attempt === 1) {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 600_000)
        ctx.signal.addEventListener('abort', () => clearTimeout(timer), { once: true })
      })
    }
    return { attempt: ctx.attempt }
  },
})

export const recoveryFlow = defineWorkflow({
  name: 'bench-recovery',
  tasks: [{ key: 'long', agent: recoveryAgent, maxAttempts: 5, timeoutMs: 900_000 }],
})
