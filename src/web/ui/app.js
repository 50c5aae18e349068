// The read-only workflow page (src/web/ui.ts serves it at /ui/). Plain browser JavaScript, no build
// step: it reads the JSON API with the tenant's API key, which it keeps in sessionStorage (gone when
// the tab closes; never localStorage). Every element is built with textContent and
// createElement(NS): no string from the API is ever parsed as HTML.

const KEY_STORAGE = 'equilateral.apiKey'
const REFRESH_MS = 2000
const SVG_NS = 'http://www.w3.org/2000/svg'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

// Task boxes of the graph, one column (or row) per layer.
const NODE_W = 224
const NODE_H = 70
const GAP_X = 56
const GAP_Y = 20
const GAP_DOWN = 40
// The width of the slot an arrow that spans several layers takes in each layer it crosses.
const VIA = 12
const PAD = 12
const NODE_RX = 10
// The graph's frame has this padding (style.css); the drawing is fitted inside it.
const GRAPH_INSET = 8

const $ = (id) => document.getElementById(id)

// --- API ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

async function api(path) {
  const key = sessionStorage.getItem(KEY_STORAGE)
  if (!key) throw new ApiError(401, 'unauthorized', 'no key')
  let res
  try {
    res = await fetch(path, {
      headers: { authorization: `Bearer ${key}`, accept: 'application/json' },
      cache: 'no-store',
    })
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached.')
  }
  const body = await res.json().catch(() => null)
  if (!res.ok) {
    throw new ApiError(res.status, body?.code ?? 'http_error', body?.detail ?? body?.title ?? res.statusText)
  }
  return body
}

// --- DOM helpers ----------------------------------------------------------------------------------

/** An HTML element; children are nodes or strings (appended as text, never parsed). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  setAttributes(node, attrs)
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false))
  return node
}

/** An SVG element, the same way. */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag)
  setAttributes(node, attrs)
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false))
  return node
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value))
  }
}

function badge(status) {
  return el('span', { class: `badge status-${status}` }, status)
}

function truncate(text, max) {
  const s = String(text)
  return s.length > max ? `${s.slice(0, max - 1)}…` : s
}

// --- formatting -----------------------------------------------------------------------------------

const pad2 = (n) => String(n).padStart(2, '0')

function clock(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`
}

/** The time of day, led by the month and day when it is not today. */
function dayAndClock(date) {
  const today = date.toDateString() === new Date().toDateString()
  return today ? clock(date) : `${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${clock(date)}`
}

/** A <time> in local time, the exact instant in its tooltip. */
function when(iso) {
  if (!iso) return '—'
  const d = new Date(iso)
  const text = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(d)}`
  return el('time', { datetime: iso, title: iso }, text)
}

/** The time of day only (the date is in the tooltip): for the tasks, whose day is the workflow's. */
function at(iso) {
  if (!iso) return '—'
  return el('time', { datetime: iso, title: iso }, clock(new Date(iso)))
}

/** Milliseconds from `from` to `to` (or now, for what has not ended), or null. */
function span(from, to) {
  if (!from) return null
  const ms = (to ? Date.parse(to) : Date.now()) - Date.parse(from)
  return Number.isFinite(ms) && ms >= 0 ? ms : null
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`
  const s = Math.round(ms / 1000)
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad2(s % 60)}s`
  const m = Math.round(s / 60)
  return `${Math.floor(m / 60)}h ${pad2(m % 60)}m`
}

function errorText(error) {
  if (error === null || error === undefined) return ''
  if (typeof error === 'object' && typeof error.message === 'string') {
    return error.name && error.name !== 'Error' ? `${error.name}: ${error.message}` : error.message
  }
  return typeof error === 'string' ? error : JSON.stringify(error)
}

// --- views ----------------------------------------------------------------------------------------

// Bumped by every navigation: an answer or timer of an older view is dropped.
let generation = 0
let timer = null

function startView(load, ...args) {
  generation++
  clearTimeout(timer)
  const gen = generation
  void load(gen, ...args)
}

function refreshLater(gen, load, ...args) {
  if (gen !== generation) return
  clearTimeout(timer)
  timer = setTimeout(() => {
    if (gen === generation) void load(gen, ...args)
  }, REFRESH_MS)
}

function show(section) {
  for (const id of ['login', 'list-view', 'workflow-view']) $(id).hidden = id !== section
}

function showError(error) {
  let message
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE)
    message = 'The key is not valid. Enter the tenant API key again.'
    $('sign-out').hidden = true
    show('login')
    $('api-key').focus()
  } else if (error instanceof ApiError && error.status === 404) {
    message = 'Not found: no workflow of this tenant has that id.'
  } else if (error instanceof ApiError && error.status === 403) {
    message = `Access refused: ${error.message}`
  } else if (error instanceof ApiError && error.status === 0) {
    message = error.message
  } else if (error instanceof ApiError) {
    message = `The server answered ${error.status} (${error.code}): ${error.message}`
  } else {
    message = `Something went wrong in the page: ${error?.message ?? error}`
  }
  $('error').textContent = message
  $('error').hidden = false
}

function clearError() {
  $('error').hidden = true
  $('error').textContent = ''
}

function route() {
  const signedIn = Boolean(sessionStorage.getItem(KEY_STORAGE))
  $('sign-out').hidden = !signedIn
  if (!signedIn) {
    generation++
    clearTimeout(timer)
    show('login')
    return
  }
  clearError()
  const match = /^#\/workflows\/([^/?#]+)$/.exec(location.hash)
  if (match) {
    // Nothing of the workflow shown before stays on screen while this one loads.
    clearWorkflow('Loading…')
    show('workflow-view')
    startView(loadWorkflow, safeDecode(match[1]))
  } else {
    document.title = 'Workflows · equilateral-agents'
    show('list-view')
    startView(loadList)
  }
}

function safeDecode(text) {
  try {
    return decodeURIComponent(text)
  } catch {
    return '' // malformed: answered as "not found"
  }
}

// --- the list of recent workflows -----------------------------------------------------------------

async function loadList(gen) {
  const query = new URLSearchParams({ limit: '50' })
  const status = $('status-filter').value
  if (status) query.set('status', status)
  try {
    const page = await api(`/v1/workflows?${query}`)
    if (gen !== generation) return
    clearError()
    renderList(page.workflows, status)
    const running = page.workflows.some((w) => w.status === 'running')
    $('list-note').textContent = `Updated ${clock(new Date())}${running ? ' · refreshing every 2 s' : ''}`
    if (running) refreshLater(gen, loadList)
  } catch (error) {
    if (gen === generation) showError(error)
  }
}

function renderList(workflows, status) {
  const rows = workflows.map((w) => {
    const href = `#/workflows/${encodeURIComponent(w.id)}`
    const ms = span(w.createdAt, w.completedAt)
    const row = el(
      'tr',
      { 'data-workflow-id': w.id, 'data-status': w.status, class: 'link-row' },
      el('td', {}, el('a', { href }, w.type)),
      el('td', {}, badge(w.status)),
      el('td', {}, when(w.createdAt)),
      el('td', { class: 'num' }, w.completedAt ? duration(ms) : `${duration(ms)} so far`),
      el('td', { class: 'num' }, String(w.tasksRemaining)),
      el('td', {}, el('code', { title: w.id }, w.id.slice(0, 8))),
    )
    row.addEventListener('click', (event) => {
      if (!(event.target instanceof HTMLAnchorElement)) location.hash = href
    })
    return row
  })
  $('workflows').tBodies[0].replaceChildren(...rows)
  $('list-empty').hidden = workflows.length > 0
  $('list-empty').textContent = status ? `No ${status} workflows.` : 'No workflows yet.'
  $('workflows').parentElement.hidden = workflows.length === 0
}

// --- one workflow ---------------------------------------------------------------------------------

async function loadWorkflow(gen, id) {
  try {
    if (!UUID.test(id)) throw new ApiError(404, 'not_found', 'not a workflow id')
    const wf = await api(`/v1/workflows/${encodeURIComponent(id)}`)
    if (gen !== generation) return
    clearError()
    renderWorkflow(wf)
    const live = wf.status === 'running' || wf.tasks.some((t) => t.status === 'running')
    $('wf-note').textContent = `Updated ${clock(new Date())}${live ? ' · refreshing every 2 s' : ''}`
    if (live) refreshLater(gen, loadWorkflow, id)
  } catch (error) {
    if (gen !== generation) return
    if (error instanceof ApiError && error.status === 404) clearWorkflow('Workflow')
    showError(error)
  }
}

function clearWorkflow(title) {
  $('wf-title').textContent = title
  $('wf-status').hidden = true
  $('wf-meta').replaceChildren()
  $('wf-error').hidden = true
  $('wf-note').textContent = ''
  $('graph').replaceChildren()
  $('tasks').tBodies[0].replaceChildren()
}

function renderWorkflow(wf) {
  document.title = `${wf.type} · equilateral-agents`
  $('wf-title').replaceChildren(wf.type, el('span', { class: 'version' }, ` v${wf.version}`))
  $('wf-status').hidden = false
  $('wf-status').className = `badge status-${wf.status}`
  $('wf-status').textContent = wf.status
  $('wf-status').dataset.status = wf.status

  const ms = span(wf.createdAt, wf.completedAt)
  const meta = [
    ['Id', el('code', {}, wf.id)],
    ['Correlation id', el('code', {}, wf.correlationId)],
    ['Created', when(wf.createdAt)],
    ['Completed', when(wf.completedAt)],
    ['Duration', wf.completedAt ? duration(ms) : `${duration(ms)} so far`],
  ]
  $('wf-meta').replaceChildren(
    ...meta.map(([term, value]) => el('div', {}, el('dt', {}, term), el('dd', {}, value))),
  )

  const problem = workflowProblem(wf)
  $('wf-error').hidden = !problem
  $('wf-error').textContent = problem

  $('graph').replaceChildren(renderGraph(wf.tasks))
  $('tasks').tBodies[0].replaceChildren(...wf.tasks.map(taskRow))
}

/** Why the workflow ended badly, in words: the failed task and its error, or the cancel reason. */
function workflowProblem(wf) {
  const e = wf.error
  if (!e) return ''
  if (typeof e === 'object' && e.error) {
    const task = wf.tasks.find((t) => t.id === e.task)
    const who = task ? `task “${task.key}”` : `agent “${e.agent ?? '?'}”`
    return `Failed: ${who} — ${errorText(e.error)}`
  }
  if (typeof e === 'object' && typeof e.reason === 'string') return `Cancelled: ${e.reason}`
  return `${wf.status === 'cancelled' ? 'Cancelled' : 'Failed'}: ${errorText(e)}`
}

/** Who does the task: its agent, or, for a wait task, the approval or event it waits for. */
function doer(t) {
  return t.wait ? `${t.wait.type} “${t.wait.name}”` : t.agent
}

/** A waiting task's status with what it waits for and until when, for people. */
function waitingFor(t) {
  if (t.status !== 'waiting' || !t.wait) return null
  const what = t.wait.type === 'approval' ? 'a decision' : 'the event'
  return t.wait.deadline
    ? `waits for ${what} until ${new Date(t.wait.deadline).toLocaleString()}`
    : `waits for ${what}`
}

function taskRow(t) {
  const waits = waitingFor(t)
  return el(
    'tr',
    { 'data-task-key': t.key, 'data-status': t.status },
    el('td', { class: 'nowrap' }, el('code', {}, t.key)),
    el('td', { class: 'nowrap' }, doer(t)),
    el('td', waits ? { title: waits } : {}, badge(t.status)),
    el('td', { class: 'deps' }, t.dependsOn.length ? t.dependsOn.join(', ') : '—'),
    el('td', { class: 'num' }, String(t.attempt)),
    el('td', { class: 'num' }, String(t.failures)),
    el('td', {}, at(t.startedAt)),
    el('td', { class: 'num' }, duration(span(t.queuedAt, t.startedAt))),
    el('td', { class: 'num' }, ranFor(t)),
    el('td', { class: 'err' }, errorText(t.error)),
  )
}

/** How long the current (or last) attempt ran, or has been running. */
function ranFor(t) {
  if (!t.startedAt) return '—'
  if (t.completedAt) return duration(span(t.startedAt, t.completedAt))
  return t.status === 'running' ? `${duration(span(t.startedAt, null))} so far` : '—'
}

// --- the task graph -------------------------------------------------------------------------------

/**
 * Layers: a task's layer is the longest path to it from a task without dependencies. An arrow that
 * spans several layers passes through a thin slot of its own in each layer between (so it never runs
 * under a box). Within a layer, slots are ordered by the mean position of what they come from in the
 * layer before (fewer crossings), then as the API listed the tasks (creation order).
 */
function layout(tasks) {
  const byKey = new Map(tasks.map((t) => [t.key, t]))
  const layerOf = new Map()
  const visiting = new Set()
  const depth = (t) => {
    if (layerOf.has(t.key)) return layerOf.get(t.key)
    if (visiting.has(t.key)) return 0 // a cycle cannot be stored; never loop on one anyway
    visiting.add(t.key)
    let d = 0
    for (const key of t.dependsOn) {
      const dep = byKey.get(key)
      if (dep) d = Math.max(d, depth(dep) + 1)
    }
    visiting.delete(t.key)
    layerOf.set(t.key, d)
    return d
  }
  for (const t of tasks) depth(t)

  const layers = Array.from({ length: Math.max(...layerOf.values()) + 1 }, () => [])
  const slots = new Map()
  const add = (slot) => {
    layers[slot.layer].push(slot)
    slots.set(slot.id, slot)
    return slot
  }
  for (const t of tasks) add({ id: JSON.stringify([t.key]), task: t, layer: layerOf.get(t.key), from: [] })
  const routes = []
  for (const t of tasks) {
    for (const key of t.dependsOn) {
      if (!byKey.has(key)) continue
      const path = [JSON.stringify([key])]
      for (let layer = layerOf.get(key) + 1; layer < layerOf.get(t.key); layer++) {
        path.push(add({ id: JSON.stringify([key, t.key, layer]), task: null, layer, from: [path.at(-1)] }).id)
      }
      const target = JSON.stringify([t.key])
      slots.get(target).from.push(path.at(-1))
      routes.push({ from: key, to: t.key, path: [...path, target] })
    }
  }

  const position = new Map()
  const ordered = layers.map((layer) => {
    const centre = (slot) => {
      const ps = slot.from.filter((id) => position.has(id)).map((id) => position.get(id))
      return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : Number.MAX_SAFE_INTEGER
    }
    const sorted = layer
      .map((slot, index) => ({ slot, index, c: centre(slot) }))
      .sort((a, b) => a.c - b.c || a.index - b.index)
      .map((x) => x.slot)
    sorted.forEach((slot, j) => position.set(slot.id, j - (sorted.length - 1) / 2))
    return sorted
  })
  return { layers: ordered, routes }
}

/**
 * The rectangle of every slot, layers left to right ('right') or, when that would not fit the page
 * at 4/5 of its size and top to bottom fits better (long chains), top to bottom ('down').
 */
function place(layers, available) {
  const measure = (direction) => {
    const right = direction === 'right'
    const breadthOf = (slot) => (slot.task ? (right ? NODE_H : NODE_W) : VIA)
    const breadths = layers.map(
      (layer) => layer.reduce((sum, slot) => sum + breadthOf(slot), 0) + (layer.length - 1) * GAP_Y,
    )
    const breadth = Math.max(...breadths)
    const [along, gap] = right ? [NODE_W, GAP_X] : [NODE_H, GAP_DOWN]
    const length = PAD * 2 + layers.length * along + (layers.length - 1) * gap
    return {
      right,
      breadthOf,
      breadths,
      breadth,
      along,
      gap,
      length,
      width: right ? length : PAD * 2 + breadth,
    }
  }
  const fit = (m) => Math.min(1, available / m.width)
  const right = measure('right')
  const down = measure('down')
  const m = fit(right) >= 0.8 || fit(right) >= fit(down) ? right : down

  const rect = new Map()
  layers.forEach((layer, i) => {
    const start = PAD + i * (m.along + m.gap)
    let offset = PAD + (m.breadth - m.breadths[i]) / 2
    for (const slot of layer) {
      const b = m.breadthOf(slot)
      rect.set(
        slot.id,
        m.right ? { x: start, y: offset, w: NODE_W, h: b } : { x: offset, y: start, w: b, h: NODE_H },
      )
      offset += b + GAP_Y
    }
  })
  return {
    direction: m.right ? 'right' : 'down',
    width: m.width,
    height: m.right ? PAD * 2 + m.breadth : m.length,
    rect,
  }
}

/** An arrow's path: out of its dependency's box, through its slots, into its dependent's box. */
function routePath(rects, direction) {
  const right = direction === 'right'
  const entry = (r) => (right ? [r.x, r.y + r.h / 2] : [r.x + r.w / 2, r.y])
  const exit = (r) => (right ? [r.x + r.w, r.y + r.h / 2] : [r.x + r.w / 2, r.y + r.h])
  let [x, y] = exit(rects[0])
  let d = `M${x},${y}`
  rects.slice(1).forEach((r, i) => {
    let [x2, y2] = entry(r)
    const last = i === rects.length - 2
    if (last) [x2, y2] = right ? [x2 - 1, y2] : [x2, y2 - 1] // the arrow's tip on the border
    const bend = Math.max(16, (right ? x2 - x : y2 - y) / 2)
    d += right
      ? ` C${x + bend},${y} ${x2 - bend},${y2} ${x2},${y2}`
      : ` C${x},${y + bend} ${x2},${y2 - bend} ${x2},${y2}`
    if (!last) {
      ;[x, y] = exit(r)
      d += ` L${x},${y}`
    }
  })
  return d
}

function renderGraph(tasks) {
  if (tasks.length === 0) return el('p', { class: 'empty' }, 'This workflow has no tasks.')
  const { layers, routes } = layout(tasks)
  const available = ($('graph').clientWidth || 1100) - 2 * GRAPH_INSET
  const { direction, width, height, rect } = place(layers, available)

  const root = svg('svg', {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Task graph: ${tasks.length} tasks in ${layers.length} layers`,
    'data-direction': direction,
  })
  // Wider than the page: shrunk to fit (CSS max-width), down to 3/4 of its size; scrolled past that.
  // (CSSOM, not a style attribute: the Content-Security-Policy allows the former only.)
  root.style.minWidth = `${Math.round(width * 0.75)}px`
  root.append(
    svg(
      'defs',
      {},
      svg(
        'marker',
        {
          id: 'arrow',
          viewBox: '0 0 10 10',
          refX: 9,
          refY: 5,
          markerWidth: 8,
          markerHeight: 8,
          markerUnits: 'userSpaceOnUse',
          orient: 'auto',
        },
        svg('path', { d: 'M0,1 L9,5 L0,9 z', class: 'arrow-head' }),
      ),
      // Every box has the same size and its own coordinates (a translated group): one clip serves all.
      svg(
        'clipPath',
        { id: 'node-clip', clipPathUnits: 'userSpaceOnUse' },
        svg('rect', { width: NODE_W, height: NODE_H, rx: NODE_RX }),
      ),
    ),
  )

  const edges = svg('g', { class: 'edges' })
  for (const route of routes) {
    edges.append(
      svg('path', {
        class: 'edge',
        'data-from': route.from,
        'data-to': route.to,
        d: routePath(
          route.path.map((id) => rect.get(id)),
          direction,
        ),
        'marker-end': 'url(#arrow)',
      }),
    )
  }
  root.append(edges)

  const nodes = svg('g', { class: 'nodes' })
  layers.forEach((layer, i) => {
    for (const slot of layer) if (slot.task) nodes.append(taskNode(slot.task, rect.get(slot.id), i))
  })
  root.append(nodes)
  return root
}

function taskNode(t, { x, y }, layer) {
  const ran = t.startedAt ? duration(span(t.startedAt, t.completedAt)) : null
  // A waiting task has run nothing: what matters is until when it waits.
  const deadline = t.status === 'waiting' && t.wait?.deadline ? new Date(t.wait.deadline) : null
  const facts = deadline
    ? [`until ${dayAndClock(deadline)}`]
    : [t.attempt > 0 ? `attempt ${t.attempt}` : null, ran].filter(Boolean)
  const tooltip = [
    `${t.key} (${doer(t)}): ${t.status}`,
    waitingFor(t),
    t.dependsOn.length ? `after ${t.dependsOn.join(', ')}` : 'no dependencies',
    t.attempt > 0 ? `attempt ${t.attempt}, ${t.failures} failed` : null,
    ran ? `ran ${ran}` : null,
    t.error ? errorText(t.error) : null,
  ].filter(Boolean)
  return svg(
    'g',
    {
      class: `node status-${t.status}`,
      'data-task-key': t.key,
      'data-status': t.status,
      'data-layer': layer,
      transform: `translate(${x} ${y})`,
      tabindex: 0,
      role: 'group',
      'aria-label': `${t.key}, ${t.wait ? doer(t) : `agent ${t.agent}`}: ${t.status}${facts.length ? `, ${facts.join(', ')}` : ''}`,
    },
    svg('title', {}, tooltip.join('\n')),
    svg('rect', { class: 'box', width: NODE_W, height: NODE_H, rx: NODE_RX }),
    svg('rect', { class: 'stripe', width: 6, height: NODE_H, 'clip-path': 'url(#node-clip)' }),
    svg('text', { class: 'key', x: 18, y: 24 }, truncate(t.key, 24)),
    svg('text', { class: 'agent', x: 18, y: 42 }, truncate(doer(t), 30)),
    svg('text', { class: 'status-label', x: 18, y: 60 }, t.status),
    svg('text', { class: 'facts', x: NODE_W - 12, y: 60, 'text-anchor': 'end' }, facts.join(' · ')),
  )
}

// --- wiring ---------------------------------------------------------------------------------------

$('key-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const key = $('api-key').value.trim()
  if (!key) return
  sessionStorage.setItem(KEY_STORAGE, key)
  $('api-key').value = ''
  route()
})

$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORAGE)
  clearError()
  location.hash = '#/'
  route()
})

$('status-filter').addEventListener('change', () => startView(loadList))
$('refresh').addEventListener('click', () => startView(loadList))
window.addEventListener('hashchange', route)

route()
