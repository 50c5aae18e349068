// Lint rules the whole team runs (`npm run lint`). Type-aware: floating promises are bugs in a
// system whose every step is an awaited database write.
import tseslint from 'typescript-eslint'
import { noCycle } from './lint/no-cycle.js'

const DRIZZLE =
  "drizzle-orm's runtime and the schema files cost ~0.3 s and ~100 MB at start: value lists are in src/db/schema/values.ts, migrate() imports drizzle when it runs"

export default tseslint.config(
  {
    ignores: ['dist/**', 'node_modules/**', '.equilateral/**', '.data/**', 'drizzle/**', 'test-artifacts/**'],
  },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['*.js', 'bin/*.js', 'lint/*.js', 'deploy/*.mjs'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-explicit-any': 'off',
      // Agent handlers are async by contract, whether or not a given one awaits.
      '@typescript-eslint/require-await': 'off',
      // Abort reasons are passed through as they are (they are Errors, typed unknown).
      '@typescript-eslint/prefer-promise-reject-errors': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // Lean processes: a worker (and `--help`) must not load what only the web tier or migrations use.
    // Outside those modules they are imported with `await import()` where needed (the CLI's commands,
    // migrate(), buildApp/startWeb in src/index.ts); type imports cost nothing at run time.
    files: ['src/**/*.ts'],
    ignores: ['src/web/**', 'src/db/schema/**', 'src/core/**'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: [{ name: 'drizzle-orm', allowTypeImports: true, message: DRIZZLE }],
          patterns: [
            {
              group: ['fastify', '@fastify/*', '**/web/*'],
              allowTypeImports: true,
              message: 'the HTTP server is loaded on first use (await import): workers never need it',
            },
            {
              group: [
                'drizzle-orm/node-postgres*',
                'drizzle-orm/pg-core',
                '**/schema/control.ts',
                '**/schema/tenant.ts',
              ],
              allowTypeImports: true,
              message: DRIZZLE,
            },
          ],
        },
      ],
    },
  },
  // No import cycles in src/ (issue 24): a cycle makes module start order, and so the data flow, hard to follow.
  noCycle(['src/**/*.ts']),
  {
    // src/core is pure: no I/O, so it is unit-testable in milliseconds.
    files: ['src/core/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            'pg',
            'pg-boss',
            'drizzle-orm*',
            'node:fs*',
            'node:net',
            'node:http',
            '../db/*',
            '../flow/*',
            '../queue/*',
          ],
        },
      ],
    },
  },
)
