// The import-cycle rule, shared by eslint.config.js and test/foundation/no-cycle.test.ts (which
// shows it fails on a planted cycle and passes on src/). eslint-plugin-import-x follows each import
// to its file (Node's resolution: our imports name their .ts files) and reports the import that
// closes a cycle. Type-only imports are not cycles (they vanish at run time); `await import()` is
// one (the module graph is the same), so a lazy import does not hide a cycle.
import { createNodeResolver, importX } from 'eslint-plugin-import-x'
import tseslint from 'typescript-eslint'

/** Settings and rule for the files `files` names (an ESLint flat-config block). */
export function noCycle(files) {
  return {
    files,
    languageOptions: { parser: tseslint.parser },
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [createNodeResolver({ extensions: ['.ts', '.js'] })],
      'import-x/extensions': ['.ts', '.js'],
    },
    rules: { 'import-x/no-cycle': ['error', { ignoreExternal: true }] },
  }
}
