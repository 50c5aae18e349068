// What the CLI's commands print on stdout. For a person at a terminal: lists as aligned tables, a
// single object as a short block of `key: value` lines (its lists as tables below it), times in the
// local zone with the zone's name. For scripts: JSON, with --json or whenever stdout is not a
// terminal (a pipe, a file, a test), so what scripts parsed before keeps its shape. `--human` forces
// the terminal form (to see it in a pipe, or in a test). Loads nothing but node's own modules: it is
// imported by main.ts at start, and `--help` must stay cheap.

export type OutputMode = 'json' | 'human'

/** --json wins, then --human; otherwise stdout decides (a terminal: human). */
export function outputMode(opts: { json?: boolean; human?: boolean }, isTTY: boolean): OutputMode {
  if (opts.json) return 'json'
  if (opts.human) return 'human'
  return isTTY ? 'human' : 'json'
}

export interface RenderOptions {
  /** IANA zone for times (default: the process's, TZ). */
  timeZone?: string | undefined
  /**
   * The terminal's width: a wider table leaves out columns (ids other than the first column, then
   * columns from the right), a longer value is cut with `…`.
   * Undefined (not a terminal): no limit but the cell width.
   */
  columns?: number | undefined
}

/** The widest a table cell may be before it is cut with `…`. */
const MAX_CELL = 60
/** The longest a value in key/value lines may be without a terminal width. */
const MAX_VALUE = 200

/** The text `print` writes: JSON (two-space indented) or the human form of `value`. */
export function render(value: unknown, mode: OutputMode, options: RenderOptions = {}): string {
  if (mode === 'json') return `${JSON.stringify(value, null, 2)}\n`
  if (isStatsReport(value)) return renderStats(value, options)
  if (isPage(value)) {
    const [list, cursor] = [Object.values(value).find(Array.isArray)!, value.nextCursor]
    const more = typeof cursor === 'string' ? ['', `next page: --cursor ${cursor}`] : []
    return `${[...table(list, options), ...more].join('\n')}\n`
  }
  return `${human(value, options).join('\n')}\n`
}

/** A page of a list: `{ workflows: [...], nextCursor }`. */
function isPage(value: unknown): value is Record<string, unknown> & { nextCursor: unknown } {
  if (!isPlainObject(value) || !('nextCursor' in value)) return false
  const keys = Object.keys(value)
  return keys.length === 2 && keys.some((k) => k !== 'nextCursor' && Array.isArray(value[k]))
}

function human(value: unknown, o: RenderOptions): string[] {
  if (Array.isArray(value)) return table(value, o)
  if (isPlainObject(value)) return block(value, o)
  return [cell(value, o, Number.POSITIVE_INFINITY)]
}

/**
 * An object as `key: value` lines with the values aligned; its lists of objects follow as titled
 * tables, its objects of plain values as indented blocks. Nulls and empty lists say so briefly.
 */
function block(object: Record<string, unknown>, o: RenderOptions, indent = ''): string[] {
  const scalars: [string, unknown][] = []
  const after: string[] = []
  const inner = { ...o, ...(o.columns ? { columns: o.columns - indent.length - 2 } : {}) }
  for (const [key, value] of Object.entries(object)) {
    if (value === undefined) continue
    if (Array.isArray(value) && value.length > 0 && value.every(isPlainObject)) {
      after.push('', `${indent}${key}:`, ...table(value, inner).map((line) => `${indent}  ${line}`))
    } else if (
      isPlainObject(value) &&
      Object.keys(value).length > 0 &&
      Object.values(value).every((v) => !isPlainObject(v) && !Array.isArray(v))
    ) {
      after.push('', `${indent}${key}:`, ...block(value, inner, `${indent}  `))
    } else scalars.push([key, value])
  }
  const width = Math.max(0, ...scalars.map(([key]) => key.length + 1))
  const room = o.columns ? Math.max(20, o.columns - indent.length - width - 2) : MAX_VALUE
  return [
    ...scalars.map(([key, value]) => `${indent}${`${key}:`.padEnd(width)}  ${cell(value, o, room)}`),
    ...after,
  ]
}

/**
 * Rows as an aligned table under a header of the keys (createdAt -> CREATED AT). Columns whose
 * values are all lists or objects are left out (--json has them); numbers are right-aligned.
 */
function table(rows: unknown[], o: RenderOptions): string[] {
  if (rows.length === 0) return ['(none)']
  if (!rows.every(isPlainObject)) return rows.map((row) => cell(row, o, o.columns ?? MAX_VALUE))
  const keys: string[] = []
  for (const row of rows) for (const key of Object.keys(row)) if (!keys.includes(key)) keys.push(key)
  let columns = keys.filter((key) =>
    rows.some((row) => {
      const v = row[key]
      return v !== undefined && v !== null && !Array.isArray(v) && !isPlainObject(v)
    }),
  )
  const text = new Map(columns.map((key) => [key, rows.map((row) => cell(row[key], o, MAX_CELL))]))
  const widthOf = (key: string) => Math.max(heading(key).length, ...text.get(key)!.map(width))
  const total = (keys: string[]) => keys.reduce((sum, key) => sum + widthOf(key) + 2, -2)
  if (o.columns) {
    const first = columns[0]
    const droppable = [
      ...columns.filter((key) => key !== first && text.get(key)!.every((v) => v === '-' || UUID.test(v))),
      ...columns.filter((key) => key !== first).reverse(),
    ]
    for (const key of droppable) {
      if (total(columns) <= o.columns) break
      columns = columns.filter((c) => c !== key)
    }
  }
  const numeric = columns.map((key) => rows.every((row) => typeof row[key] === 'number' || row[key] == null))
  const widths = columns.map(widthOf)
  const line = (values: string[], alignNumbers: boolean) =>
    values
      .map((v, i) => (alignNumbers && numeric[i] ? padStart(v, widths[i]!) : padEnd(v, widths[i]!)))
      .join('  ')
      .trimEnd()
  return [
    line(columns.map(heading), false),
    ...rows.map((_, r) =>
      line(
        columns.map((key) => text.get(key)![r]!),
        true,
      ),
    ),
  ]
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** One value as table or block text: times in the local zone, lists and objects as compact JSON. */
function cell(value: unknown, o: RenderOptions, max: number): string {
  let text: string
  if (value === null || value === undefined) text = '-'
  else if (Array.isArray(value) && value.length === 0) text = '(none)'
  else if (value instanceof Date) text = formatTime(value, o.timeZone)
  else if (typeof value === 'string')
    text = ISO_TIME.test(value) ? formatTime(new Date(value), o.timeZone) : value
  else if (typeof value === 'number') text = formatNumber(value)
  else if (typeof value === 'boolean' || typeof value === 'bigint') text = String(value)
  else text = JSON.stringify(value)
  text = text.replace(/\s*\n\s*/g, ' ')
  return width(text) > max ? `${[...text].slice(0, max - 1).join('')}…` : text
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/

/** `2026-12-06 11:25:03 GMT+1`: the local (or given) zone, named. */
export function formatTime(at: Date, timeZone?: string): string {
  if (Number.isNaN(at.getTime())) return String(at)
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', {
      ...(timeZone ? { timeZone } : {}),
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
      timeZoneName: 'short',
    })
      .formatToParts(at)
      .map((p) => [p.type, p.value]),
  )
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName}`
}

function formatNumber(n: number): string {
  if (Number.isInteger(n)) return String(n)
  return n.toFixed(Math.abs(n) >= 100 ? 1 : 3).replace(/\.?0+$/, '')
}

function heading(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/[_-]+/g, ' ')
    .toUpperCase()
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

/** Display width: code points (good enough for what the CLI prints: ids, names, numbers). */
function width(text: string): number {
  return [...text].length
}

function padEnd(text: string, to: number): string {
  return text + ' '.repeat(Math.max(0, to - width(text)))
}

function padStart(text: string, to: number): string {
  return ' '.repeat(Math.max(0, to - width(text))) + text
}

// ---------------------------------------------------------------------------------------------
// stats: one table of workflow types and one of agents, per tenant, then the all-tenant totals.

interface StatsLike {
  window: { since: unknown; until: unknown }
  workflows?: Record<string, unknown>[]
  agents?: Record<string, unknown>[]
  tenants?: { tenantId: string; workflows: Record<string, unknown>[]; agents: Record<string, unknown>[] }[]
  totals?: { workflows: Record<string, unknown>[]; agents: Record<string, unknown>[] }
}

function isStatsReport(value: unknown): value is StatsLike {
  if (!isPlainObject(value) || !isPlainObject(value.window)) return false
  return (Array.isArray(value.workflows) && Array.isArray(value.agents)) || Array.isArray(value.tenants)
}

function renderStats(report: StatsLike, o: RenderOptions): string {
  const lines = [
    `window: ${cell(report.window.since, o, MAX_CELL)} to ${cell(report.window.until, o, MAX_CELL)}`,
  ]
  const section = (
    title: string,
    s: { workflows: Record<string, unknown>[]; agents: Record<string, unknown>[] },
  ) => {
    const inner = { ...o, ...(o.columns ? { columns: o.columns - 2 } : {}) }
    lines.push('', title)
    lines.push(...indent(s.workflows.length ? table(s.workflows, inner) : ['no workflows in the window']))
    lines.push('')
    lines.push(...indent(s.agents.length ? table(s.agents, inner) : ['no agent ran in the window']))
  }
  if (report.tenants) {
    if (report.tenants.length === 0) lines.push('', 'nothing ran in the window')
    for (const t of report.tenants) section(`tenant ${t.tenantId}`, t)
    if (report.totals && report.tenants.length > 1) section('all tenants', report.totals)
  } else section('workflows and agents', { workflows: report.workflows ?? [], agents: report.agents ?? [] })
  return `${lines.join('\n')}\n`
}

function indent(lines: string[]): string[] {
  return lines.map((line) => `  ${line}`)
}

// ---------------------------------------------------------------------------------------------
// Internal agents ('@approval', '@event': the waits) in stats: hidden unless --all.

interface AgentsHolder {
  agents?: { agent: string }[]
  tenants?: { agents: { agent: string }[] }[]
  totals?: { agents: { agent: string }[] }
}

/** The report without the agents whose id starts with `@` (the engine's own, not the user's). */
export function withoutInternalAgents<T extends AgentsHolder>(report: T): T {
  const mine = (agents: { agent: string }[]) => agents.filter((a) => !a.agent.startsWith('@'))
  return {
    ...report,
    ...(report.agents ? { agents: mine(report.agents) } : {}),
    ...(report.tenants ? { tenants: report.tenants.map((t) => ({ ...t, agents: mine(t.agents) })) } : {}),
    ...(report.totals ? { totals: { ...report.totals, agents: mine(report.totals.agents) } } : {}),
  }
}
