// The Grafana dashboard and the alert rules refer only to metrics (and labels) the processes export,
// and every metric of ours has a panel; promtool accepts the rules and their unit tests pass.
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { parse as parseYaml } from 'yaml'
import { Metrics } from '../../src/metrics.ts'
import { hasPromtool, promtool } from '../helpers/prometheus.ts'
import { inCi } from '../helpers/tools.ts'

const root = new URL('../../', import.meta.url)
const dashboard = JSON.parse(
  await readFile(new URL('deploy/grafana/dashboards/equilateral.json', root), 'utf8'),
)
const rules = parseYaml(await readFile(new URL('deploy/prometheus/alerts.yml', root), 'utf8'))
const datasource = parseYaml(
  await readFile(new URL('deploy/grafana/provisioning/datasources/prometheus.yml', root), 'utf8'),
)

/** Every series name our processes expose, with its label names (histograms with their suffixes). */
async function exported(): Promise<Map<string, Set<string>>> {
  const names = new Map<string, Set<string>>()
  const metrics = new Metrics()
  // Registers the scrape-time gauges (pool, queues); nothing connects until a scrape.
  const pool = new pg.Pool({ connectionString: 'postgres://127.0.0.1:1/unused' })
  metrics.observeResources(pool, { getQueues: async () => [] } as unknown as PgBoss)
  const scrapeLabels = ['job', 'instance']
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    const declared = (metrics.registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] })
      .labelNames
    const labels = new Set([...scrapeLabels, ...(declared ?? [])])
    if (String(m.type) === 'histogram') {
      names.set(`${m.name}_bucket`, new Set([...labels, 'le']))
      names.set(`${m.name}_sum`, labels)
      names.set(`${m.name}_count`, labels)
    } else {
      names.set(m.name, labels)
    }
  }
  names.set('up', new Set(scrapeLabels))
  await pool.end()
  return names
}

const known = await exported()
const OURS = /\b(equilateral_[a-z0-9_]+|process_[a-z0-9_]+|nodejs_[a-z0-9_]+|up)\b(\{[^}]*\})?/g

/** Metric references of a PromQL expression: name and the label names its selector uses. */
function references(expr: string): { name: string; labels: string[] }[] {
  return [...expr.matchAll(OURS)].map((m) => ({
    name: m[1]!,
    labels: [...(m[2] ?? '').matchAll(/([a-z_]+)\s*(=~|!~|!=|=)/g)].map((l) => l[1]!),
  }))
}

function checkExpr(where: string, expr: string): string[] {
  const problems: string[] = []
  const refs = references(expr)
  if (refs.length === 0) problems.push(`${where}: no metric of ours in ${expr}`)
  for (const { name, labels } of refs) {
    const have = known.get(name)
    if (!have) problems.push(`${where}: unknown metric ${name}`)
    else for (const l of labels) if (!have.has(l)) problems.push(`${where}: ${name} has no label ${l}`)
  }
  return problems
}

type Panel = { title: string; type: string; targets?: { expr: string }[]; datasource?: { uid: string } }
const panels: Panel[] = dashboard.panels.filter((p: Panel) => p.type !== 'row')

describe('Grafana dashboard', () => {
  it('asks for its Prometheus data source instead of naming one, defaulting to the provisioned one', () => {
    const variable = dashboard.templating.list.find((v: { type: string }) => v.type === 'datasource')
    expect(variable).toMatchObject({ name: 'datasource', query: 'prometheus' })
    expect(JSON.stringify(dashboard)).not.toContain(`"uid":"${datasource.datasources[0].uid}"`)
    // With no choice made, Grafana takes the default data source: the provisioned one.
    expect(datasource.datasources[0]).toMatchObject({ type: 'prometheus', isDefault: true })
  })

  it('queries only exported metrics and labels, through the provisioned data source', () => {
    const problems: string[] = []
    for (const p of panels) {
      if (!p.targets?.length) problems.push(`${p.title}: no query`)
      if (p.datasource?.uid !== '${datasource}') problems.push(`${p.title}: a data source of its own`)
      for (const t of p.targets ?? []) problems.push(...checkExpr(p.title, t.expr))
    }
    expect(problems).toEqual([])
  })

  it('has a panel for every equilateral metric and the views operators asked for', () => {
    const used = new Set(
      panels.flatMap((p) => (p.targets ?? []).flatMap((t) => references(t.expr).map((r) => r.name))),
    )
    const ours = [...known.keys()].filter((n) => n.startsWith('equilateral_') && !/_(sum|count)$/.test(n))
    expect(ours.filter((n) => !used.has(n))).toEqual([])
    const titles = panels.map((p) => p.title.toLowerCase()).join('\n')
    for (const view of [
      'throughput',
      'failure rate',
      'dispatch latency',
      'queue depth',
      'workflow duration',
      'sweeper',
    ])
      expect(titles).toContain(view)
    const quantiles = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n')
    for (const q of ['0.5', '0.95', '0.99']) expect(quantiles).toContain(`histogram_quantile(${q},`)
    // Per-agent panels repeat over the agent variable.
    expect(dashboard.panels.some((p: { repeat?: string }) => p.repeat === 'agent')).toBe(true)
    expect(dashboard.templating.list.find((v: { name: string }) => v.name === 'agent').query.query).toBe(
      'label_values(equilateral_tasks_started_total, agent)',
    )
  })
})

describe('alert rules', () => {
  it('cover stuck queues and failure rates, on exported metrics only', () => {
    const all = rules.groups.flatMap((g: { rules: { alert: string; expr: string }[] }) => g.rules)
    const names = all.map((r: { alert: string }) => r.alert)
    expect(names).toEqual(
      expect.arrayContaining([
        'EquilateralQueueStuck',
        'EquilateralNoProgress',
        'EquilateralTaskFailureRateHigh',
      ]),
    )
    expect(all.flatMap((r: { alert: string; expr: string }) => checkExpr(r.alert, r.expr))).toEqual([])
  })

  it.skipIf(!hasPromtool() && !inCi)('pass `promtool check rules` and their unit tests', () => {
    expect(hasPromtool(), 'promtool is missing: apt-get install prometheus').toBe(true)
    const dir = fileURLToPath(new URL('deploy/prometheus/', root))
    const checked = promtool(['check', 'rules', `${dir}alerts.yml`])
    expect(checked.output).toContain('SUCCESS: 10 rules found')
    expect(checked.status).toBe(0)
    const tested = promtool(['test', 'rules', `${dir}alerts.test.yml`])
    expect(tested.output).toContain('SUCCESS')
    expect(tested.status).toBe(0)
  })
})
