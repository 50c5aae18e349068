// The agents and workflow types an engine knows: every registered version of each, checked as
// they are registered (a task naming an agent nobody registered is a DefinitionError).
import type { AgentDefinition, WorkflowDefinition } from '../core/definition.ts'
import { DefinitionError, UnknownWorkflowTypeError, UnknownWorkflowVersionError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'

export class Registry {
  readonly #metrics: Metrics
  /** Every registered version of each agent, by id then version. */
  readonly #agents = new Map<string, Map<number, AgentDefinition<any, any>>>()
  /** The latest version of each workflow type (what starts by default) ... */
  readonly #workflows = new Map<string, WorkflowDefinition<any>>()
  /** ... and every registered version of it (runs in flight keep theirs; StartOptions.version pins one). */
  readonly #workflowVersions = new Map<string, Map<number, WorkflowDefinition<any>>>()

  constructor(metrics: Metrics) {
    this.#metrics = metrics
  }

  /**
   * Several versions of one agent id may be registered; two definitions of the same (id, version)
   * are a DefinitionError (the same definition twice is registered once).
   */
  registerAgent(a: AgentDefinition<any, any>): void {
    let versions = this.#agents.get(a.id)
    if (!versions) this.#agents.set(a.id, (versions = new Map()))
    const known = versions.get(a.version)
    if (known === a) return
    if (known) {
      throw new DefinitionError(`agent "${a.id}" version ${a.version} is registered twice`, a.id)
    }
    versions.set(a.version, a)
    this.#metrics.declareAgent(a.id)
  }

  /** Every registered agent, all versions. */
  allAgents(): AgentDefinition<any, any>[] {
    return [...this.#agents.values()].flatMap((versions) => [...versions.values()])
  }

  /**
   * Registers a workflow type's version; every version registered stays available to start (see
   * StartOptions.version), the highest is what starts by default. With agents given, each agent
   * (and agent version) its tasks name must be registered; the same (name, version) twice is a
   * DefinitionError (registering the same definition again does nothing).
   */
  registerWorkflow(def: WorkflowDefinition<any>): void {
    if (this.#agents.size > 0) {
      for (const t of def.tasks) {
        if (t.wait) continue
        const versions = this.#agents.get(t.agentId)
        if (!versions) {
          throw new DefinitionError(
            `workflow "${def.name}": task "${t.key}" uses unknown agent "${t.agentId}"`,
            t.key,
          )
        }
        if (t.agentVersion !== null && !versions.has(t.agentVersion)) {
          throw new DefinitionError(
            `workflow "${def.name}" version ${def.version}: task "${t.key}" uses agent "${t.agentId}" version ${t.agentVersion}, which is not registered (registered: ${[...versions.keys()].sort((a, b) => a - b).join(', ')})`,
            t.key,
          )
        }
      }
    }
    let versions = this.#workflowVersions.get(def.name)
    if (!versions) this.#workflowVersions.set(def.name, (versions = new Map()))
    const known = versions.get(def.version)
    if (known === def) return
    if (known) {
      throw new DefinitionError(`workflow "${def.name}" version ${def.version} is registered twice`)
    }
    versions.set(def.version, def)
    this.#metrics.declareWorkflowType(def.name)
    const latest = this.#workflows.get(def.name)
    if (!latest || def.version > latest.version) this.#workflows.set(def.name, def)
  }

  /**
   * A workflow type's definition: the highest registered version, or the given one.
   * UnknownWorkflowTypeError for a type nobody registered, UnknownWorkflowVersionError for a
   * version of it that is not registered.
   */
  workflow(type: string, version?: number): WorkflowDefinition<any> {
    const def = this.#workflows.get(type)
    if (!def) throw new UnknownWorkflowTypeError(type)
    if (version === undefined) return def
    const pinned = this.#workflowVersions.get(type)?.get(version)
    if (!pinned) throw new UnknownWorkflowVersionError(type, version, this.workflowVersions(type))
    return pinned
  }

  /** The registered versions of a workflow type, lowest first (empty for an unknown type). */
  workflowVersions(type: string): number[] {
    return [...(this.#workflowVersions.get(type)?.keys() ?? [])].sort((a, b) => a - b)
  }

  get workflowTypes(): string[] {
    return [...this.#workflows.keys()]
  }

  allAgentIds(): string[] {
    return [
      ...new Set([
        ...this.#agents.keys(),
        ...[...this.#workflowVersions.values()]
          .flatMap((versions) => [...versions.values()])
          .flatMap((w) => w.tasks.filter((t) => !t.wait).map((t) => t.agentId)),
      ]),
    ]
  }

  /** The latest registered version of a workflow type; undefined for an unknown type. */
  latest(type: string): WorkflowDefinition<any> | undefined {
    return this.#workflows.get(type)
  }
}
