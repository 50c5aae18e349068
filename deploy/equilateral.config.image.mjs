// The container image's configuration file (the Dockerfile copies it to /app/equilateral.config.mjs):
// the same modules as the repository's equilateral.config.ts, compiled, since the image runs the
// build and not the sources. Every command of the image (web, worker, migrate, compose's services)
// finds it from the working directory /app.
export default {
  modules: ['./dist/workers/registry.js'],
}
