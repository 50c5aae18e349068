// The deployment files, read by real parsers rather than by eye: docker-compose.yml as
// `docker-compose config` resolves it (Debian's docker-compose v1, which needs no Docker engine),
// the Dockerfile's runtime stage, the Prometheus and Grafana provisioning it mounts, and the
// Procfile. Without docker-compose (apt-get install docker-compose) the compose checks are skipped,
// except in CI (CI set), where .ci/run installs it and its absence is a failure.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { migrationsFolder } from '../../src/db/migrate.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { inCi, runs } from '../helpers/tools.ts'

const root = fileURLToPath(new URL('../../', import.meta.url))
const hasCompose = runs('docker-compose', ['version'])
const hasPromtool = runs('promtool', ['--version'])
const hasPsql = runs('psql', ['--version'])

function readYaml(file: string): any {
  return parse(readFileSync(path.join(root, file), 'utf8'))
}

interface Service {
  image?: string
  build?: { context: string } | string
  command?: string[] | string
  container_name?: string
  ports?: (string | { host_ip?: string; published?: string | number; target: number })[]
  volumes?: (string | { type: string; source?: string; target: string })[]
  environment?: Record<string, string | null>
  depends_on?: Record<string, { condition: string }>
  deploy?: { replicas?: number }
  healthcheck?: { test: string[] | string }
}

/** docker-compose.yml as Compose resolves it, with the variables in `env` and nothing else set. */
function composeConfig(env: Record<string, string> = {}): { services: Record<string, Service> } {
  if (!hasCompose) {
    throw new Error(
      'docker-compose is not on PATH: apt-get install docker-compose (.ci/run installs it when run as root)',
    )
  }
  const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config'], {
    cwd: root,
    encoding: 'utf8',
    // Only PATH and HOME from outside: a WORKER_REPLICAS or ADMIN_TOKEN in the caller's shell must
    // not change what the defaults are checked to be.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env },
  })
  expect(result.stderr, 'docker-compose config wrote to stderr').toBe('')
  expect(result.status, result.stderr).toBe(0)
  return parse(result.stdout)
}

/** Host-published ports as `ip:published:target` (Compose v1 prints strings, v2 objects). */
function hostPorts(service: Service): string[] {
  return (service.ports ?? []).map((p) =>
    typeof p === 'string'
      ? p.replace(/\/tcp$/, '')
      : `${p.host_ip ?? '0.0.0.0'}:${p.published ?? ''}:${p.target}`,
  )
}

/** Bind mounts as [host path, container path]; named volumes are left out. */
function bindMounts(service: Service): [string, string][] {
  return (service.volumes ?? []).flatMap((v): [string, string][] => {
    if (typeof v !== 'string') return v.type === 'bind' && v.source ? [[v.source, v.target]] : []
    const [source = '', target = ''] = v.split(':')
    return path.isAbsolute(source) ? [[source, target]] : []
  })
}

const skipCompose = !hasCompose && !inCi
describe.skipIf(skipCompose)(
  `docker-compose.yml${skipCompose ? ' (skipped: docker-compose is missing; apt-get install docker-compose)' : ''}`,
  () => {
    it('defines the whole stack, every app service from the one image built here', () => {
      const { services } = composeConfig()
      expect(Object.keys(services)).toEqual(
        expect.arrayContaining(['postgres', 'migrate', 'web', 'worker', 'prometheus', 'grafana']),
      )
      for (const name of ['migrate', 'web', 'worker']) {
        const service = services[name]!
        const context = typeof service.build === 'string' ? service.build : service.build?.context
        expect(path.resolve(root, context ?? ''), name).toBe(path.resolve(root))
        expect(service.image, name).toBe(services.migrate!.image)
        expect([service.command].flat(), name).toEqual([name])
      }
    })

    it('runs the migration once, after PostgreSQL is healthy, and web and worker only after it succeeded', () => {
      const { services } = composeConfig()
      expect(services.migrate!.depends_on?.postgres?.condition).toBe('service_healthy')
      expect(services.postgres!.healthcheck).toBeDefined()
      for (const name of ['web', 'worker']) {
        expect(services[name]!.depends_on?.migrate?.condition, name).toBe('service_completed_successfully')
      }
    })

    it('lets the worker scale: no container_name, no host port, replicas from WORKER_REPLICAS', () => {
      const { services } = composeConfig()
      const worker = services.worker!
      expect(worker.container_name).toBeUndefined()
      expect(worker.ports ?? []).toEqual([])
      expect(Number(worker.deploy?.replicas)).toBe(2)
      expect(Number(composeConfig({ WORKER_REPLICAS: '5' }).services.worker!.deploy?.replicas)).toBe(5)
    })

    it('publishes host ports on 127.0.0.1 only', () => {
      const { services } = composeConfig()
      expect(hostPorts(services.web!)).toEqual(['127.0.0.1:3000:3000'])
      expect(hostPorts(services.prometheus!)).toEqual(['127.0.0.1:9090:9090'])
      expect(hostPorts(services.grafana!)).toEqual(['127.0.0.1:3001:3000'])
      for (const [name, service] of Object.entries(services)) {
        for (const port of hostPorts(service)) expect(port, name).toMatch(/^127\.0\.0\.1:/)
      }
    })

    it('gives the app services settings the app accepts', () => {
      const { services } = composeConfig()
      for (const name of ['migrate', 'web', 'worker']) {
        const env = services[name]!.environment ?? {}
        expect(env.DATABASE_URL, name).toMatch(/^postgres:\/\/.+@postgres:5432\//)
        expect(env.DATABASE_ROLE, name).toBe('equilateral_app')
      }
      expect(services.worker!.environment?.MAINTENANCE_DATABASE_URL).toMatch(
        /^postgres:\/\/.+@postgres:5432\//,
      )
      expect(services.migrate!.environment?.MIGRATION_DATABASE_URL).toMatch(
        /^postgres:\/\/.+@postgres:5432\//,
      )
      const web = services.web!
      expect(web.environment?.PORT).toBe('3000')
      // The config refuses an admin token shorter than 16 characters, so the default must be longer.
      expect(web.environment?.ADMIN_TOKEN?.length).toBeGreaterThanOrEqual(16)
      expect(composeConfig({ ADMIN_TOKEN: 'x'.repeat(32) }).services.web!.environment?.ADMIN_TOKEN).toBe(
        'x'.repeat(32),
      )
      expect([web.healthcheck?.test].flat().join(' ')).toContain('http://127.0.0.1:3000/healthz')
      expect(services.worker!.environment?.METRICS_PORT).toBe('9464')
    })

    it("gives web the application login, the worker the application and maintenance logins, and the owner's to migrate alone", () => {
      const { services } = composeConfig()
      /** The login of a postgres:// URL, or null for any other value. */
      const user = (url: string | null | undefined) =>
        url && URL.canParse(url) && url.startsWith('postgres')
          ? decodeURIComponent(new URL(url).username)
          : null
      const owner = services.postgres!.environment?.POSTGRES_USER ?? 'postgres'
      expect(user(services.migrate!.environment?.MIGRATION_DATABASE_URL)).toBe(owner)
      // The logins deploy/postgres/init-logins.sh creates by default.
      const script = readFileSync(path.join(root, 'deploy/postgres/init-logins.sh'), 'utf8')
      const made = (name: string) => new RegExp(`\\$\\{${name}:-([a-z_]+)\\}`).exec(script)?.[1]
      for (const name of ['web', 'worker']) {
        const env = services[name]!.environment ?? {}
        expect(env.MIGRATION_DATABASE_URL, name).toBeUndefined()
        expect(
          Object.values(env).filter((v) => user(v) === owner),
          name,
        ).toEqual([])
        expect(user(env.DATABASE_URL), name).toBe(made('APP_DB_USER'))
      }
      // The worker runs the retention purge; web purges and erases nothing.
      expect(user(services.worker!.environment?.MAINTENANCE_DATABASE_URL)).toBe(made('MAINTENANCE_DB_USER'))
      expect(services.web!.environment?.MAINTENANCE_DATABASE_URL).toBeUndefined()
      expect(made('APP_DB_USER')).toBeTruthy()
      expect(made('MAINTENANCE_DB_USER')).toBeTruthy()
      expect(bindMounts(services.postgres!)).toContainEqual([
        path.join(root, 'deploy/postgres/init-logins.sh'),
        '/docker-entrypoint-initdb.d/init-logins.sh',
      ])
    })

    it('mounts deploy files that exist, where Prometheus and Grafana look for them', () => {
      const { services } = composeConfig()
      const mounts = ['prometheus', 'grafana'].flatMap((name) => bindMounts(services[name]!))
      expect(mounts.length).toBeGreaterThanOrEqual(4)
      for (const [source] of mounts) {
        expect(path.relative(root, source), source).toMatch(/^deploy\//)
        expect(existsSync(source), source).toBe(true)
      }
      const target = (file: string) => mounts.find(([source]) => source === path.join(root, file))?.[1]
      expect(target('deploy/prometheus/prometheus.yml')).toBe('/etc/prometheus/prometheus.yml')
      // rule_files are relative to the config file, so alerts.yml must sit next to it.
      expect(target('deploy/prometheus/alerts.yml')).toBe('/etc/prometheus/alerts.yml')
      expect(target('deploy/grafana/provisioning')).toBe('/etc/grafana/provisioning')
      const provider = readYaml('deploy/grafana/provisioning/dashboards/equilateral.yml')
      expect(target('deploy/grafana/dashboards')).toBe(provider.providers[0].options.path)
    })

    it('has Prometheus scrape every web and worker replica on the ports they listen on', () => {
      const { services } = composeConfig()
      const config = readYaml('deploy/prometheus/prometheus.yml')
      const job = (name: string) => config.scrape_configs.find((j: any) => j.job_name === name)
      const targets = (name: string) =>
        job(name).dns_sd_configs.map((sd: any) => ({ names: sd.names, type: sd.type, port: sd.port }))
      expect(targets('web')).toEqual([
        { names: ['web'], type: 'A', port: Number(services.web!.environment?.PORT) },
      ])
      expect(targets('worker')).toEqual([
        { names: ['worker'], type: 'A', port: Number(services.worker!.environment?.METRICS_PORT) },
      ])
      expect(targets('web')[0].port).toBe(3000)
      expect(targets('worker')[0].port).toBe(9464)
    })
  },
)

const skipPsql = !hasPsql && !inCi
describe.skipIf(skipPsql)(
  `deploy/postgres/init-logins.sh${skipPsql ? ' (skipped: psql is missing; apt-get install postgresql-client)' : ''}`,
  () => {
    it('creates a login in the application role and one in the maintenance role, nothing more, run twice', async () => {
      const db = await createTestDatabase()
      try {
        const owner = new URL(db.url)
        const login = (user: string, password: string, options?: string) => {
          const u = new URL(db.url)
          u.username = user
          u.password = password
          if (options) u.searchParams.set('options', options)
          return u.toString()
        }
        const env = {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: process.env.HOME ?? '/tmp',
          PGHOST: owner.hostname,
          PGPORT: owner.port || '5432',
          PGPASSWORD: decodeURIComponent(owner.password),
          POSTGRES_USER: decodeURIComponent(owner.username),
          POSTGRES_DB: db.name,
          APP_DB_USER: 'equilateral_test_web',
          APP_DB_PASSWORD: 'equilateral_test_web',
          MAINTENANCE_DB_USER: 'equilateral_test_maintenance',
          MAINTENANCE_DB_PASSWORD: 'equilateral_test_maintenance',
        }
        // The container runs it once per data directory; by hand it may run again.
        for (let run = 0; run < 2; run++) {
          const result = spawnSync('sh', ['deploy/postgres/init-logins.sh'], {
            cwd: root,
            env,
            encoding: 'utf8',
          })
          expect(result.status, result.stderr).toBe(0)
        }
        const ask = async (url: string, sql: string) => {
          const client = new pg.Client({ connectionString: url })
          await client.connect()
          try {
            return (await client.query(sql)).rows[0]
          } finally {
            await client.end()
          }
        }
        const purge = `has_function_privilege('equilateral.maintenance_purge(text, integer, integer, integer)', 'EXECUTE')`
        const who = `SELECT current_user AS role, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
            array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                  WHERE m.member = r.oid ORDER BY 1)::text[] AS member_of, ${purge} AS purges
          FROM pg_roles r WHERE r.rolname = session_user`
        const flags = { rolsuper: false, rolbypassrls: false, rolcreaterole: false, rolcreatedb: false }
        expect(
          await ask(login(env.APP_DB_USER, env.APP_DB_PASSWORD, '-c role=equilateral_app'), who),
        ).toEqual({
          ...flags,
          role: 'equilateral_app',
          member_of: ['equilateral_app'],
          purges: false,
        })
        expect(await ask(login(env.MAINTENANCE_DB_USER, env.MAINTENANCE_DB_PASSWORD), who)).toEqual({
          ...flags,
          role: env.MAINTENANCE_DB_USER,
          member_of: ['equilateral_maintenance'],
          purges: true,
        })
      } finally {
        await db.drop()
      }
    })
  },
)

describe('Prometheus and Grafana provisioning', () => {
  it('scrapes every 15s and loads the alert rules next to the config', () => {
    const config = readYaml('deploy/prometheus/prometheus.yml')
    expect(config.global.scrape_interval).toBe('15s')
    expect(config.rule_files).toEqual(['alerts.yml'])
    expect(Array.isArray(readYaml('deploy/prometheus/alerts.yml').groups)).toBe(true)
  })

  const skipPromtool = !hasPromtool && !inCi
  it.skipIf(skipPromtool)(
    `passes promtool check config${skipPromtool ? ' (skipped: promtool is missing; apt-get install prometheus)' : ''}`,
    () => {
      expect(hasPromtool, 'promtool is not on PATH: apt-get install prometheus').toBe(true)
      const result = spawnSync('promtool', ['check', 'config', 'deploy/prometheus/prometheus.yml'], {
        cwd: root,
        encoding: 'utf8',
      })
      expect(result.status, `${result.stdout}${result.stderr}`).toBe(0)
    },
  )

  it('provisions the prometheus data source under the uid dashboards use', () => {
    const [source] = readYaml('deploy/grafana/provisioning/datasources/prometheus.yml').datasources
    expect(source).toMatchObject({ uid: 'prometheus', type: 'prometheus', url: 'http://prometheus:9090' })
    expect(source.isDefault).toBe(true)
  })
})

describe('Dockerfile', () => {
  const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
  const stages: string[][] = []
  for (const line of dockerfile) {
    if (/^FROM\s/i.test(line)) stages.push([])
    stages.at(-1)?.push(line)
  }
  const runtime = stages.at(-1) ?? []
  const instructions = (keyword: string) =>
    runtime
      .filter((line) => line.toUpperCase().startsWith(`${keyword} `))
      .map((line) => line.slice(keyword.length + 1))
  const workdir = instructions('WORKDIR').at(-1) ?? '/'

  it('builds in one stage and runs in another, on node:24-slim', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2)
    expect(runtime[0]).toMatch(/^FROM node:24-slim\b/i)
    expect(stages[0]!.join('\n')).toMatch(/npm ci/)
    expect(stages[0]!.join('\n')).toMatch(/npm run build/)
  })

  it('runs as a non-root user with production dependencies only', () => {
    const user = instructions('USER').at(-1)
    expect(user, 'the runtime stage has no USER').toBeDefined()
    expect(user).not.toMatch(/^(root|0)(:|$)/)
    expect(instructions('RUN').find((run) => run.includes('npm ci'))).toMatch(/--omit=dev/)
    expect(instructions('ENTRYPOINT')).toEqual(['["node", "bin/equilateral.js"]'])
    expect(instructions('CMD')).toEqual(['["web"]'])
  })

  it('runs the build, not the sources: bin/equilateral.js prefers src/ whenever it exists', () => {
    const copied = instructions('COPY').map((args) => args.split(/\s+/))
    expect(copied.some((args) => args.slice(0, -1).some((source) => /^(\.\/)?src\/?$/.test(source)))).toBe(
      false,
    )
    expect(copied.some((args) => args.includes('--from=build') && /(^|\/)dist\/?$/.test(args.at(-2)!))).toBe(
      true,
    )
  })

  it('puts the SQL migrations where the compiled migrator looks for them', () => {
    // src/paths.ts finds the package root (package.json beside drizzle/), wherever the code runs.
    expect(path.relative(root, path.dirname(migrationsFolder.control))).toBe('drizzle')
    const copies = instructions('COPY').map((args) => args.split(/\s+/))
    const destination = (pattern: RegExp) =>
      copies
        .filter((args) => args.slice(0, -1).some((source) => pattern.test(source)))
        .map((args) => path.posix.resolve(workdir, args.at(-1)!))
    expect(destination(/^(\.\/)?drizzle\/?$/)).toEqual([path.posix.resolve(workdir, 'drizzle')])
    expect(destination(/^package\.json$/)).toContain(path.posix.resolve(workdir))
  })

  it("puts a configuration file in the working directory that names the build's modules", async () => {
    const copies = instructions('COPY').map((args) => args.split(/\s+/))
    const config = copies.find((args) =>
      /^equilateral\.config\.m?js$/.test(path.posix.basename(args.at(-1)!)),
    )
    expect(config, 'no equilateral.config.mjs copied into the image').toBeDefined()
    expect(path.posix.dirname(path.posix.resolve(workdir, config!.at(-1)!))).toBe(workdir)
    const { default: image } = (await import(path.join(root, config![0]!))) as {
      default: { modules: string[] }
    }
    // Each module is the compiled twin of a source file the build stage compiles.
    for (const module of image.modules) {
      expect(module).toMatch(/^\.\/dist\/.*\.js$/)
      expect(
        existsSync(path.join(root, module.replace(/^\.\/dist\//, '').replace(/\.js$/, '.ts'))),
        module,
      ).toBe(true)
    }
    // The same modules as the repository's own configuration file, which the Procfile's processes use.
    const { default: repo } = (await import(path.join(root, 'equilateral.config.ts'))) as {
      default: { modules: string[] }
    }
    expect(image.modules.map((m) => m.replace(/^\.\/dist\//, './').replace(/\.js$/, '.ts'))).toEqual(
      repo.modules,
    )
  })

  it('keeps host builds and data out of the build context', () => {
    const ignored = readFileSync(path.join(root, '.dockerignore'), 'utf8').split('\n')
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'dist', '.equilateral', '.git']))
  })
})

describe('Procfile', () => {
  const entries = Object.fromEntries(
    readFileSync(path.join(root, 'Procfile'), 'utf8')
      .trim()
      .split('\n')
      .map((line): [string, string] => [
        line.slice(0, line.indexOf(':')),
        line.slice(line.indexOf(':') + 1).trim(),
      ]),
  )

  it('migrates on release and runs web and worker through the bin script', () => {
    expect(entries).toEqual({
      release: 'node bin/equilateral.js migrate',
      web: 'node bin/equilateral.js web',
      worker: 'node bin/equilateral.js worker',
    })
  })

  it('names commands the CLI has', () => {
    for (const command of Object.values(entries)) {
      const [, script, ...args] = command.split(' ')
      const result = spawnSync(process.execPath, [script!, ...args, '--help'], {
        cwd: root,
        encoding: 'utf8',
      })
      expect(result.status, `${command} --help: ${result.stderr}`).toBe(0)
    }
  })
})
