// One worker process of the recovery benchmark (bench/recovery.ts): `node bench/recovery-worker.ts
// <database url>`. It runs what the `worker` command runs for tasks: the worker and the sweeper
// (with it the liveness pass), with the configuration from the environment (the defaults, unless
// the orchestrator sets LIVENESS_INTERVAL_MS=0 to measure the heartbeat path).
import { pino } from 'pino'
import { createEngine } from '../src/index.ts'
import { recoveryAgent, recoveryFlow } from './recovery-defs.ts'

const url = process.argv[2]
if (!url) throw new Error('usage: recovery-worker.ts <database url>')
const engine = await createEngine({
  connectionString: url,
  agents: [recoveryAgent],
  workflows: [recoveryFlow],
  log: pino({ level: 'error' }),
})
await engine.startWorker()
await engine.startSweeper()
process.once('SIGTERM', () => {
  engine.close().then(
    () => process.exit(0),
    () => process.exit(1),
  )
})
process.send?.({ kind: 'ready' })
