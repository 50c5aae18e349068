// The README is a front page and the reference lives in docs/: a link or an anchor that points at
// a moved or renamed section is a dead end for a reader. Every relative link in README.md and
// docs/*.md must name a file of the repository and, with `#anchor`, a heading of that file (by
// GitHub's rules: lower case, spaces to '-', punctuation dropped, '-1', '-2' for repeats). So must
// every `README.md#...` or `docs/*.md` reference in code comments, messages, CLI help, the web page
// and openapi.json. No database.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../../', import.meta.url))
const self = fileURLToPath(import.meta.url)

/** GitHub's anchor for a heading's text (github-slugger), before repeats are numbered. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/<[^>]*>/g, '')
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-')
}

/** The lines of a markdown file that are prose: fenced code blocks are blanked, line numbers kept. */
function proseLines(text: string): string[] {
  let fence: string | null = null
  return text.split('\n').map((line) => {
    const m = /^\s*(`{3,}|~{3,})/.exec(line)
    if (m) {
      if (fence === null) fence = m[1]!
      else if (m[1]!.startsWith(fence)) fence = null
      return ''
    }
    return fence === null ? line : ''
  })
}

/** The anchors GitHub gives a markdown file's headings. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  for (const line of proseLines(text)) {
    const m = /^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/.exec(line)
    if (!m) continue
    const base = slug(m[1]!.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1'))
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n === 0 ? base : `${base}-${n}`)
  }
  return out
}

type Files = { read(rel: string): string | undefined; isDir(rel: string): boolean }

const repoFiles: Files = {
  read: (rel) => {
    const abs = path.join(root, rel)
    return existsSync(abs) && statSync(abs).isFile() ? readFileSync(abs, 'utf8') : undefined
  },
  isDir: (rel) => {
    const abs = path.join(root, rel)
    return existsSync(abs) && statSync(abs).isDirectory()
  },
}

/** Why `target` (a path relative to the repository root, with an optional #anchor) does not resolve, or null. */
function problem(target: string, files: Files, from: string): string | null {
  const hash = target.indexOf('#')
  const file = hash < 0 ? target : target.slice(0, hash)
  const anchor = hash < 0 ? null : decodeURIComponent(target.slice(hash + 1))
  const rel = path.posix.normalize(file === '' ? from : file).replace(/\/$/, '')
  if (rel.startsWith('..')) return 'points outside the repository'
  if (rel === '.' || files.isDir(rel)) return anchor ? 'an anchor on a folder' : null
  const text = files.read(rel)
  if (text === undefined) return `no file ${rel}`
  if (anchor === null) return null
  if (!rel.endsWith('.md')) return `an anchor into ${rel}, which is not markdown`
  return anchors(text).has(anchor) ? null : `no heading #${anchor} in ${rel}`
}

/** The relative links of a markdown file (at `rel` in the repository), resolved from the repository root. */
function links(rel: string, files: Files): { line: number; target: string; resolved: string }[] {
  const text = files.read(rel) ?? ''
  const dir = path.posix.dirname(rel)
  return proseLines(text).flatMap((line, i) => {
    const prose = line.replace(/(`+)[^`]*?\1/g, '') // inline code is not a link
    return [...prose.matchAll(/\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)/g)]
      .map((m) => m[1]!)
      .filter((target) => !/^[a-z][a-z0-9+.-]*:/i.test(target)) // http:, https:, mailto:
      .map((target) => ({
        line: i + 1,
        target,
        resolved: target.startsWith('#') ? rel + target : path.posix.join(dir, target),
      }))
  })
}

/** Every relative link of a markdown file (at `rel` in the repository) that does not resolve. */
function brokenLinks(rel: string, files: Files): string[] {
  return links(rel, files).flatMap(({ line, target, resolved }) => {
    const why = problem(resolved, files, rel)
    return why ? [`${rel}:${line}: (${target}) ${why}`] : []
  })
}

/** Every `README.md#...` or `docs/....md[#...]` named in a text file that does not resolve. */
function brokenMentions(rel: string, text: string, files: Files): string[] {
  const out: string[] = []
  text.split('\n').forEach((line, i) => {
    for (const m of line.matchAll(/(?<![\w./-])(README\.md|docs\/[\w./-]+?\.md)(#[\w-]+)?/g)) {
      const why = problem(m[1]! + (m[2] ?? ''), files, rel)
      if (why) out.push(`${rel}:${i + 1}: (${m[0]}) ${why}`)
    }
    if (/\bsee (the )?README\b(?!\.md)/i.test(line))
      out.push(`${rel}:${i + 1}: names the README without a file`)
  })
  return out
}

function walk(rel: string, ok: (name: string) => boolean): string[] {
  const abs = path.join(root, rel)
  if (!existsSync(abs)) return []
  if (statSync(abs).isFile()) return ok(rel) ? [rel] : []
  return readdirSync(abs, { withFileTypes: true }).flatMap((e) =>
    e.name === 'node_modules' || e.name === 'results' ? [] : walk(path.posix.join(rel, e.name), ok),
  )
}

const markdown = ['README.md', ...walk('docs', (f) => f.endsWith('.md'))]
// Where code, messages, help and the API document point readers at the docs. Migrations are left
// out: a migration file's text is part of its recorded hash.
const sources = [
  'src',
  'bin',
  'workers',
  'bench',
  'test',
  'examples',
  '.ci',
  'openapi.json',
  'Dockerfile',
  'Procfile',
]
  .flatMap((d) =>
    walk(d, (f) => /\.(ts|js|mjs|json|html|css|sh|yml)$|\/run$|^Dockerfile$|^Procfile$/.test(f)),
  )
  .filter((f) => path.join(root, f) !== self)

describe('links in the README and docs/', () => {
  it('the README is a front page: under 20 KB, with a table of contents that reaches every docs file', () => {
    const readme = readFileSync(path.join(root, 'README.md'), 'utf8')
    expect(Buffer.byteLength(readme)).toBeLessThan(20_000)
    const contents = readme.slice(
      readme.indexOf('## Contents'),
      readme.indexOf('\n## ', readme.indexOf('## Contents') + 1),
    )
    for (const doc of markdown.filter((f) => f !== 'README.md')) expect(contents).toContain(`](${doc})`)
  })

  it('every relative link and anchor in README.md and docs/*.md resolves', () => {
    expect(markdown.length).toBeGreaterThan(5)
    expect(markdown.flatMap((f) => brokenLinks(f, repoFiles))).toEqual([])
  })

  it('the package ships what the README and docs link to, so the links work in node_modules too', () => {
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { files: string[] }
    const shipped = (rel: string) =>
      rel === 'README.md' ||
      rel === 'package.json' ||
      pkg.files.some((f) => rel === f || rel.startsWith(f + '/'))
    expect(markdown.filter((f) => !shipped(f))).toEqual([])
    const notShipped = markdown.flatMap((f) =>
      links(f, repoFiles)
        .map(({ line, resolved }) => ({
          line,
          file: path.posix.normalize(resolved.split('#')[0]!).replace(/\/$/, ''),
        }))
        .filter(({ file }) => !shipped(file))
        .map(({ line, file }) => `${f}:${line}: ${file}`),
    )
    expect(notShipped).toEqual([])
  })

  it('every README.md or docs/ reference in code, messages, tests, benchmarks and openapi.json resolves', () => {
    expect(sources.length).toBeGreaterThan(50)
    expect(sources.flatMap((f) => brokenMentions(f, repoFiles.read(f)!, repoFiles))).toEqual([])
  })

  it('names each kind of broken link', () => {
    const tree: Record<string, string> = {
      'README.md': [
        '# Title',
        '## Using it as a library',
        '## Using it as a library',
        '## Compliance: events, retention, erasure',
        'Fine: [a](#using-it-as-a-library), [b](#using-it-as-a-library-1), [c](docs/a.md#moved-here),',
        '[d](#compliance-events-retention-erasure), [e](docs/), [f](https://example.com/#x), `[g](#in-code)`.',
        'Broken: [h](#moved-here), [i](docs/missing.md), [j](docs/a.md#nowhere), [k](../outside.md).',
        '```md',
        '[l](#inside-a-code-block)',
        '```',
      ].join('\n'),
      'docs/a.md':
        '# A\n\n## Moved here\n\nBack: [m](../README.md#title), [n](README.md#title), [o](#moved-here).\n',
    }
    const files: Files = { read: (rel) => tree[rel], isDir: (rel) => rel === 'docs' }
    expect(brokenLinks('README.md', files)).toEqual([
      'README.md:7: (#moved-here) no heading #moved-here in README.md',
      'README.md:7: (docs/missing.md) no file docs/missing.md',
      'README.md:7: (docs/a.md#nowhere) no heading #nowhere in docs/a.md',
      'README.md:7: (../outside.md) points outside the repository',
    ])
    expect(brokenLinks('docs/a.md', files)).toEqual(['docs/a.md:5: (README.md#title) no file docs/README.md'])
    expect(
      brokenMentions(
        'src/x.ts',
        '// see README.md#title and docs/a.md#moved-here\n// see the README, Compliance',
        files,
      ),
    ).toEqual(['src/x.ts:2: names the README without a file'])
    expect(
      brokenMentions('src/y.ts', "throw new Error('see docs/a.md#gone, README.md#title')", files),
    ).toEqual(['src/y.ts:1: (docs/a.md#gone) no heading #gone in docs/a.md'])
  })
})
