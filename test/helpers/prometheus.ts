// Reading a Prometheus text exposition in tests: samples by `name{labels}`, and promtool when the
// machine has it (Debian's `prometheus` package; CI installs it).
import { spawnSync } from 'node:child_process'
import { runs } from './tools.ts'

export type Samples = Map<string, number>

/** Parses `name{a="x",b="y"} value` lines; label order is kept as exposed. */
export function parseExposition(text: string): Samples {
  const samples: Samples = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const cut = line.lastIndexOf(' ')
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)))
  }
  return samples
}

/** The value of one series (0 when absent), e.g. sample(s, 'x_total', { agent: 'a' }). */
export function sample(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  for (const [key, value] of samples) {
    const brace = key.indexOf('{')
    const keyName = brace < 0 ? key : key.slice(0, brace)
    if (keyName !== name) continue
    const body = brace < 0 ? '' : key.slice(brace + 1, -1)
    const have = Object.fromEntries([...body.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]))
    const wanted = Object.entries(labels).every(([k, v]) => have[k] === v)
    if (wanted && Object.keys(have).length === Object.keys(labels).length) return value
  }
  return 0
}

export function hasPromtool(): boolean {
  return runs('promtool', ['--version'])
}

/** Runs promtool with `input` on stdin; returns its exit status and output. */
export function promtool(args: string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', args, { input, encoding: 'utf8' })
  return { status: r.status, output: `${r.stdout}${r.stderr}` }
}
