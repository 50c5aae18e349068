// Definition validation (src/core/definition.ts), pure: a workflow or agent that cannot run fails
// when it is defined, with a DefinitionError naming the key involved; a valid one gets its defaults.
// (test/fuzz/definition.test.ts throws generated garbage at the same functions through the engine.)
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, LIMITS, TASK_DEFAULTS } from '../../src/core/definition.ts'
import { DefinitionError } from '../../src/errors.ts'

const agent = defineAgent({ id: 'step', handler: async () => null })

/** The DefinitionError `fn` throws (the test fails when it throws none, or another error). */
function refused(fn: () => unknown): DefinitionError {
  try {
    fn()
  } catch (error) {
    expect(error).toBeInstanceOf(DefinitionError)
    return error as DefinitionError
  }
  return expect.unreachable('accepted')
}

const workflow = (tasks: unknown[]) => () => defineWorkflow({ name: 'w', tasks: tasks as never })

describe('defineWorkflow', () => {
  it('fills in the retry and timeout defaults, and orders the tasks after their dependencies', () => {
    const def = defineWorkflow({
      name: 'deploy',
      tasks: [
        { key: 'ship', agent, dependsOn: ['build'] },
        { key: 'build', agent, maxAttempts: 5 },
      ],
    })
    expect(def).toMatchObject({ kind: 'workflow', name: 'deploy', version: 1, input: null })
    expect(def.order).toEqual(['build', 'ship'])
    expect(def.tasks[0]).toMatchObject({ key: 'ship', agentId: 'step', type: 'step', ...TASK_DEFAULTS })
    expect(def.tasks[1]).toMatchObject({ key: 'build', maxAttempts: 5 })
    expect(Object.isFrozen(def)).toBe(true)
  })

  it('refuses what cannot run, naming the task', () => {
    const cases: [unknown[], string, string | undefined][] = [
      [[{ key: 'a', agent, dependsOn: ['a'] }], 'depends on itself', 'a'],
      [
        [
          { key: 'a', agent },
          { key: 'b', agent, dependsOn: ['a', 'a'] },
        ],
        'lists a dependency twice',
        'b',
      ],
      [[{ key: 'a', agent, dependsOn: ['missing'] }], 'unknown task "missing"', 'a'],
      [
        [
          { key: 'a', agent },
          { key: 'a', agent },
        ],
        'duplicate task key "a"',
        'a',
      ],
      [[{ key: 'a', agent, maxAttempts: 0 }], 'maxAttempts must be an integer from 1', 'a'],
      [[{ key: 'a', agent, maxAttempts: LIMITS.maxAttempts + 1 }], 'maxAttempts', 'a'],
      [[{ key: 'a', agent, timeoutMs: 1.5 }], 'timeoutMs', 'a'],
      [[{ key: 'a' }], 'has no valid agent', 'a'],
      [[{ key: 'a', agent, dependsOn: 'b' }], 'dependsOn must be an array', 'a'],
      [[null], 'a task is not an object', undefined],
    ]
    for (const [tasks, message, key] of cases) {
      const error = refused(workflow(tasks))
      expect(error.message).toContain(message)
      expect(error.key).toBe(key)
      expect(error.code).toBe('invalid_definition')
    }
  })

  it('refuses a workflow without a usable name, version or tasks', () => {
    expect(
      refused(() => defineWorkflow({ name: 'has space', tasks: [{ key: 'a', agent }] })).message,
    ).toContain('workflow name')
    expect(
      refused(() => defineWorkflow({ name: 'w', version: 0, tasks: [{ key: 'a', agent }] })).message,
    ).toContain('version must be a positive integer')
    expect(refused(() => defineWorkflow({ name: 'w', tasks: [] })).message).toContain('has no tasks')
    expect(refused(() => defineWorkflow(null as never)).message).toContain('must be an object')
  })

  it('accepts a task option exactly within its bounds', () => {
    fc.assert(
      fc.property(fc.integer({ min: -5, max: LIMITS.maxAttempts + 5 }), (maxAttempts) => {
        const define = workflow([{ key: 'a', agent, maxAttempts }])
        if (maxAttempts >= 1 && maxAttempts <= LIMITS.maxAttempts) {
          expect(define().tasks[0]?.maxAttempts).toBe(maxAttempts)
        } else expect(refused(define).key).toBe('a')
      }),
    )
  })
})

describe('defineAgent', () => {
  it('accepts ids of 1-63 letters, digits, _ . - and refuses the others', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 70 }), (id) => {
        const define = () => defineAgent({ id, handler: async () => null })
        if (/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(id)) expect(define().id).toBe(id)
        else expect(refused(define).message).toContain('agent id')
      }),
    )
  })

  it('refuses an agent without a handler, naming it', () => {
    expect(refused(() => defineAgent({ id: 'x' } as never))).toMatchObject({ key: 'x' })
  })
})
