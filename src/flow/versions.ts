// Versions in flight: a task records the agent version its run needs (agent_version); a worker that
// lacks that version does not run it. This module is the worker's side of it, with no database
// access: which versions of each agent a worker has (the policy its claims pass), and which
// definition runs a claimed task. What happens to a task no version here can run is decided in the
// claim's transaction: src/flow/unserved.ts.
import type { AgentDefinition } from '../core/definition.ts'
import { DefinitionError } from '../errors.ts'
import { queueName } from '../queue/boss.ts'

export interface VersionPolicy {
  /** The versions of the task's agent this worker has, lowest first. */
  versions: readonly number[]
  /** Delay of the leave's new attempt. */
  retryMs: number
  /** Unserved this long, the task fails for good. */
  waitMs: number
}

/** The agents a worker runs, by id, then version (several versions of one id may run side by side). */
export class AgentVersions {
  readonly #agents = new Map<string, Map<number, AgentDefinition<any, any>>>()
  /** Per queue: the versions of its agent this worker has, for the claim. */
  readonly #policies = new Map<string, VersionPolicy>()

  constructor(
    agents: readonly AgentDefinition<any, any>[],
    options: { agentVersionRetryMs?: number | undefined; agentVersionWaitMs?: number | undefined },
  ) {
    for (const a of agents) {
      let versions = this.#agents.get(a.id)
      if (!versions) this.#agents.set(a.id, (versions = new Map()))
      const known = versions.get(a.version)
      if (known && known !== a) {
        throw new DefinitionError(`agent "${a.id}" version ${a.version} is given twice`, a.id)
      }
      versions.set(a.version, a)
    }
    for (const [id, versions] of this.#agents) {
      this.#policies.set(queueName(id), {
        versions: [...versions.keys()].sort((x, y) => x - y),
        retryMs: options.agentVersionRetryMs ?? 5000,
        waitMs: options.agentVersionWaitMs ?? 600_000,
      })
    }
  }

  /** The agent ids, one per queue. */
  ids(): string[] {
    return [...this.#agents.keys()]
  }

  /** The queue's policy; undefined when this worker does not serve the queue. */
  policy(queue: string): VersionPolicy | undefined {
    return this.#policies.get(queue)
  }

  /** The agent's highest version this worker has. */
  latest(id: string): AgentDefinition<any, any> {
    const versions = this.#agents.get(id) as Map<number, AgentDefinition<any, any>>
    return versions.get(Math.max(...versions.keys())) as AgentDefinition<any, any>
  }

  /** The version a claimed task's run needs (the claim only returns those this worker has), or the highest. */
  of(agentId: string, agentVersion: number | null): AgentDefinition<any, any> {
    return agentVersion === null
      ? this.latest(agentId)
      : (this.#agents.get(agentId)?.get(agentVersion) as AgentDefinition<any, any>)
  }

  /** For the start-up log line: each agent with its versions. */
  describe(): string[] {
    return [...this.#agents].map(([id, v]) => `${id}@${[...v.keys()].sort((x, y) => x - y).join(',')}`)
  }
}
