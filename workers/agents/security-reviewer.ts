// The security_scan step of deploy-feature: a line-by-line scan of one source file for committed
// secrets and risky patterns. Deterministic and offline, so the example runs anywhere; a real
// deployment would call a scanner (semgrep, gitleaks) here and map its findings to the same shape.
//
// Excerpts are masked before they leave the agent: the result is stored, audited and shown to
// people, so it must never carry the secret it reports.
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import { defineAgent, PermanentError } from '../../src/index.ts'

export type Severity = 'high' | 'medium' | 'low'

export type Finding = { rule: string; severity: Severity; line: number; excerpt: string }

export type SecurityScanResult = {
  findings: Finding[]
  /** Counts of every finding, including any beyond the findings listed. */
  counts: { high: number; medium: number; low: number }
  /** No high-severity finding. */
  passed: boolean
}

export type SecurityScanData = { source: string; filename?: string }

interface Rule {
  rule: string
  severity: Severity
  matches(line: string): number | undefined
}

/** At most this many findings are listed (the counts stay exact), so the result stays small. */
export const MAX_FINDINGS = 500
const MAX_EXCERPT = 160
/** Lines scanned between two checks of the abort signal (and a turn of the event loop). */
const LINES_PER_SLICE = 2000

const PRIVATE_KEY_BEGIN = /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/
const PRIVATE_KEY_END = /-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----/
/** A base64 line of a PEM body (possibly quoted or joined with +), a PEM header, or a blank line. */
const KEY_MATERIAL =
  /^[\s'"`+]*(?:[A-Za-z0-9+/=]{16,}|(?:Proc-Type|DEK-Info|Comment): .*)?(?:\\n)?[\s'"`+,;]*$/
const AWS_KEY_ID = /\b(AKIA|ASIA)[0-9A-Z]{16}\b/g
// A string literal assigned to a name that ends like a credential: `dbPassword = '...'`,
// `"api_key": "..."`, `GITHUB_TOKEN: '...'`. Interpolated templates are not literals.
const SECRET_NAME = String.raw`[A-Za-z0-9_$-]*(?:password|passwd|pwd|secret|token|api[_-]?key|secret[_-]?key|access[_-]?key|private[_-]?key|credentials?)`
const SECRET_ASSIGNMENT = new RegExp(
  String.raw`(["']?\b${SECRET_NAME}["']?\s*[:=]\s*)(["'\x60])((?:(?!\2).)+)\2`,
  'gi',
)
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@'"`]+:)(?!\$\{)([^\s/@'"`]+)@/gi
const SQL_STATEMENT = /\b(?:select\b.*\bfrom|insert\s+into|update\s+[\w."`]+\s+set|delete\s+from)\b/i
const SQL_KEYWORD = /\b(?:select|insert|update|delete)\b/i

function pattern(re: RegExp) {
  return (line: string) => {
    const m = re.exec(line)
    return m ? m.index : undefined
  }
}

function secretAssignment(line: string): number | undefined {
  for (const m of line.matchAll(SECRET_ASSIGNMENT)) {
    if (!(m[3] as string).includes('${')) return m.index
  }
  return undefined
}

/** SQL in an untagged template literal with `${`, or in a string literal joined with `+`. */
function sqlInjection(line: string): number | undefined {
  if (!SQL_STATEMENT.test(line)) return undefined
  // A tagged template (sql`...${x}`) is parameterised by its tag, so only untagged ones count.
  const template = /(?<![\w$])`[^`]*\$\{/.exec(line)
  if (template && SQL_KEYWORD.test(template[0])) return template.index
  for (const m of line.matchAll(/(['"])((?:(?!\1).)*)\1/g)) {
    if (!SQL_KEYWORD.test(m[2] as string)) continue
    const before = line.slice(0, m.index)
    const after = line.slice(m.index + m[0].length)
    if (/^\s*\+/.test(after) || /\+\s*$/.test(before)) return m.index
  }
  return undefined
}

const RULES: readonly Rule[] = [
  { rule: 'aws-access-key-id', severity: 'high', matches: pattern(/\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/) },
  { rule: 'private-key', severity: 'high', matches: pattern(PRIVATE_KEY_BEGIN) },
  { rule: 'hardcoded-secret', severity: 'high', matches: secretAssignment },
  {
    rule: 'credentials-in-url',
    severity: 'high',
    matches: pattern(/\b[a-z][a-z0-9+.-]*:\/\/[^\s/:@'"`]+:(?!\$\{)[^\s/@'"`]+@/i),
  },
  { rule: 'eval', severity: 'high', matches: pattern(/(?<![\w$.])eval\s*\(/) },
  { rule: 'new-function', severity: 'high', matches: pattern(/\bnew\s+Function\s*\(/) },
  {
    rule: 'command-injection',
    severity: 'high',
    matches: pattern(
      /(?:(?<![\w$.])|\b(?:child_process|childProcess|cp)\.)(?:exec|execSync|spawn|spawnSync)\s*\(\s*(?:`[^`]*\$\{|(['"])(?:(?!\1).)*\1\s*\+|[\w$.]+\s*\+)/,
    ),
  },
  { rule: 'sql-injection', severity: 'high', matches: sqlInjection },
  {
    rule: 'tls-verification-disabled',
    severity: 'high',
    matches: pattern(
      /\brejectUnauthorized\s*:\s*false\b|NODE_TLS_REJECT_UNAUTHORIZED\b['"]?\s*[=:,]\s*['"]?0/,
    ),
  },
  {
    rule: 'insecure-http',
    severity: 'medium',
    matches: pattern(
      /\bhttp:\/\/(?!(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?:[:/'"`\s]|$)|www\.w3\.org\/)/i,
    ),
  },
  { rule: 'weak-hash', severity: 'medium', matches: pattern(/\bcreateHash\s*\(\s*['"`](?:md5|sha1)['"`]/i) },
  { rule: 'insecure-random', severity: 'low', matches: pattern(/\bMath\.random\s*\(/) },
  { rule: 'debugger-statement', severity: 'low', matches: pattern(/^\s*debugger\s*;?\s*$/) },
]

/** Replaces every secret the rules know of; applied to each excerpt before anything else. */
export function maskSecrets(line: string): string {
  const begin = PRIVATE_KEY_BEGIN.exec(line)
  if (begin) line = `${line.slice(0, begin.index + begin[0].length)}***`
  return line
    .replace(AWS_KEY_ID, '$1****************')
    .replace(SECRET_ASSIGNMENT, (whole, prefix: string, quote: string, value: string) =>
      value.includes('${') ? whole : `${prefix}${quote}***${quote}`,
    )
    .replace(URL_CREDENTIALS, '$1***@')
}

function excerpt(line: string, at: number): string {
  const masked = maskSecrets(line).trim()
  if (masked.length <= MAX_EXCERPT) return masked
  // Secrets are masked already, so any window of the masked line is safe to show.
  const start = Math.max(0, Math.min(at - 40, masked.length - MAX_EXCERPT))
  return `${start > 0 ? '…' : ''}${masked.slice(start, start + MAX_EXCERPT)}${start + MAX_EXCERPT < masked.length ? '…' : ''}`
}

/** Scans the text; `signal` is checked between slices of lines, which also let timers run. */
export async function scanSource(source: string, signal?: AbortSignal): Promise<SecurityScanResult> {
  const lines = source.split(/\r\n|\r|\n/)
  const findings: Finding[] = []
  const counts = { high: 0, medium: 0, low: 0 }
  let inPrivateKey = false
  for (let i = 0; i < lines.length; i++) {
    if (i > 0 && i % LINES_PER_SLICE === 0) {
      signal?.throwIfAborted()
      await yieldToEventLoop()
    }
    const line = lines[i] as string
    if (inPrivateKey) {
      // Key material is reported once, at its BEGIN line, and never quoted. Anything that does not
      // look like key material ends the block, so a stray BEGIN line cannot hide the rest of a file.
      if (PRIVATE_KEY_END.test(line)) {
        inPrivateKey = false
        continue
      }
      if (KEY_MATERIAL.test(line)) continue
      inPrivateKey = false
    }
    for (const rule of RULES) {
      const at = rule.matches(line)
      if (at === undefined) continue
      counts[rule.severity]++
      if (findings.length < MAX_FINDINGS) {
        findings.push({ rule: rule.rule, severity: rule.severity, line: i + 1, excerpt: excerpt(line, at) })
      }
    }
    const begin = PRIVATE_KEY_BEGIN.exec(line)
    if (begin && !PRIVATE_KEY_END.test(line.slice(begin.index))) inPrivateKey = true
  }
  signal?.throwIfAborted()
  return { findings, counts, passed: counts.high === 0 }
}

export const securityReviewer = defineAgent<SecurityScanData, SecurityScanResult>({
  id: 'security-reviewer',
  taskTypes: ['security_scan'],
  handler: async (ctx) => {
    const data = ctx.data as unknown
    if (data === null || typeof data !== 'object' || typeof (data as SecurityScanData).source !== 'string') {
      throw new PermanentError('security_scan needs data { source: string, filename?: string }')
    }
    const result = await scanSource((data as SecurityScanData).source, ctx.signal)
    // Counts only: the source and the excerpts stay out of the logs.
    ctx.log.info({ counts: result.counts, passed: result.passed }, 'security scan finished')
    return result
  },
})
