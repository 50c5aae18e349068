# syntax=docker/dockerfile:1
# One image for every process: `web` (the default), `worker` and `migrate` are commands of
# bin/equilateral.js. Build: docker build -t equilateral-agents .

# Build stage: every dependency (TypeScript and the types of the optional embedded-postgres
# included), then src/ and workers/ compiled into dist/.
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: `prepare` compiles the sources, which are not copied yet; `npm run build` does
# it below, so this layer stays cached until the lockfile changes.
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY workers ./workers
RUN npm run build

# Runtime stage: production dependencies and the compiled output only. No src/: bin/equilateral.js
# runs src/cli/main.ts when it exists (Node 24 strips types), so leaving it out makes it run dist/.
FROM node:24-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=optional: embedded-postgres (and its ~100 MB server binaries) is only for running without
# DATABASE_URL, which a container always has. --ignore-scripts: no `prepare` build here.
RUN npm ci --omit=dev --omit=optional --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
# The web page's static files (tsc copies no assets) go beside their compiled module, dist/src/web.
COPY src/web/ui ./dist/src/web/ui
COPY bin ./bin
COPY examples ./examples
# The migrations sit beside package.json, where src/paths.ts looks for the package root.
COPY drizzle ./drizzle
# The configuration file every command reads: which (compiled) modules hold the agents and workflows.
COPY deploy/equilateral.config.image.mjs ./equilateral.config.mjs
USER node
EXPOSE 3000 9464
ENTRYPOINT ["node", "bin/equilateral.js"]
CMD ["web"]
