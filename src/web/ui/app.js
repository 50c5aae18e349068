// The console (src/web/ui.ts serves it at /ui/). Plain browser JavaScript, no build step: it calls
// the JSON API with the tenant's API key, which it keeps in sessionStorage (gone when the tab
// closes; never localStorage, a cookie or a URL). Every action goes through the same HTTP routes as
// the CLI. Every element is built with textContent and createElement(NS): no string from the API is
// ever parsed as HTML. The page follows changes through the server-sent events of /v1/events, read
// with fetch() so the key travels in the Authorization header (EventSource cannot send one).

const KEY_STORAGE = 'equilateral.apiKey'
const APPROVER_STORAGE = 'equilateral.approver'
const SVG_NS = 'http://www.w3.org/2000/svg'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// A change notified within this long of another is read once with it.
const COALESCE_MS = 60

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

function authHeader() {
  const key = sessionStorage.getItem(KEY_STORAGE)
  if (!key) throw new ApiError(401, 'unauthorized', 'no key')
  return `Bearer ${key}`
}

/** A JSON API call; `body` (for POST) is sent as JSON. */
async function api(path, { method = 'GET', body } = {}) {
  const headers = { authorization: authHeader(), accept: 'application/json' }
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res
  try {
    res = await fetch(path, {
      method,
      headers,
      cache: 'no-store',
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached.')
  }
  const answer = await res.json().catch(() => null)
  if (!res.ok) {
    throw new ApiError(
      res.status,
      answer?.code ?? 'http_error',
      answer?.detail ?? answer?.title ?? res.statusText,
    )
  }
  return answer
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

/** The browser's time zone, by name and by offset (what every time on the page is in). */
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone
function zoneOf(date) {
  const part = new Intl.DateTimeFormat('en-US', { timeZone: ZONE, timeZoneName: 'shortOffset' })
    .formatToParts(date)
    .find((p) => p.type === 'timeZoneName')
  return part?.value ?? ZONE
}

function clock(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`
}

/** The time of day, led by the month and day when it is not today. */
function dayAndClock(date) {
  const today = date.toDateString() === new Date().toDateString()
  return today ? clock(date) : `${pad2(date.getMonth() + 1)}-${pad2(date.getDate())} ${clock(date)}`
}

/** A <time> in local time with its zone, the exact instant (UTC) in its tooltip. */
function when(iso) {
  if (!iso) return '—'
  const d = new Date(iso)
  const text = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(d)} ${zoneOf(d)}`
  return el('time', { datetime: iso, title: `${d.toISOString()} (${ZONE})` }, text)
}

/** The time of day with its zone (the date is in the tooltip): for the tasks, whose day is the workflow's. */
function at(iso) {
  if (!iso) return '—'
  const d = new Date(iso)
  return el('time', { datetime: iso, title: `${d.toISOString()} (${ZONE})` }, `${clock(d)} ${zoneOf(d)}`)
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

/** JSON for people: indented; `undefined` and null as a dash. */
function pretty(value) {
  if (value === null || value === undefined) return '—'
  return JSON.stringify(value, null, 2)
}

/** A datetime-local input's value (local wall time) as an ISO instant, or null. */
function localInput(value) {
  if (!value) return null
  const d = new Date(value)
  return Number.isNaN(d.getTime()) ? null : d.toISOString()
}

// --- views ----------------------------------------------------------------------------------------

// Bumped by every navigation: an answer of an older view is dropped.
let generation = 0
// What is on screen: { view: 'list' | 'workflow' | 'dead', id?, task? (the open task's key) }.
let current = { view: 'none' }

function show(section) {
  for (const id of ['login', 'list-view', 'workflow-view', 'dead-view']) $(id).hidden = id !== section
}

function showError(error) {
  let message
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE)
    message = 'The key is not valid. Enter the tenant API key again.'
    $('sign-out').hidden = true
    stopLive()
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
  $('nav-dead').hidden = !signedIn
  generation++
  if (!signedIn) {
    stopLive()
    current = { view: 'none' }
    show('login')
    return
  }
  clearError()
  startLive()
  const wf = /^#\/workflows\/([^/?#]+)(?:\/tasks\/([^/?#]+))?$/.exec(location.hash)
  if (wf) {
    const id = safeDecode(wf[1])
    const task = wf[2] ? safeDecode(wf[2]) : null
    if (current.view !== 'workflow' || current.id !== id) {
      // Nothing of the workflow shown before stays on screen while this one loads.
      clearWorkflow('Loading…')
    }
    current = { view: 'workflow', id, task }
    show('workflow-view')
    void loadWorkflow(generation)
  } else if (location.hash === '#/dead-letters') {
    current = { view: 'dead' }
    document.title = 'Dead letters · equilateral-agents'
    show('dead-view')
    void loadDeadLetters(generation)
  } else {
    current = { view: 'list' }
    document.title = 'Workflows · equilateral-agents'
    show('list-view')
    void loadList(generation)
  }
}

/** Reads what is on screen again (a change was notified, or the stream came back). */
function reload() {
  const gen = generation
  if (current.view === 'list') void loadList(gen)
  else if (current.view === 'workflow') void loadWorkflow(gen)
  else if (current.view === 'dead') void loadDeadLetters(gen)
}

function safeDecode(text) {
  try {
    return decodeURIComponent(text)
  } catch {
    return '' // malformed: answered as "not found"
  }
}

function updated(note) {
  $(note).textContent = `Updated ${clock(new Date())} ${zoneOf(new Date())}`
}

// --- the list of workflows ------------------------------------------------------------------------

/** The list's query: the look-up when one is entered, else the filters. */
function listQuery() {
  const query = new URLSearchParams({ limit: '50' })
  const value = $('find-value').value.trim()
  if (value) {
    query.set($('find-kind').value, value)
    return query
  }
  const status = $('status-filter').value
  if (status) query.set('status', status)
  const type = $('type-filter').value.trim()
  if (type) query.set('type', type)
  const since = localInput($('since-filter').value)
  if (since) query.set('since', since)
  const until = localInput($('until-filter').value)
  if (until) query.set('until', until)
  return query
}

async function loadList(gen) {
  const query = listQuery()
  try {
    if (query.get('id') && !UUID.test(query.get('id'))) {
      throw new ApiError(400, 'invalid_request', 'a workflow id is a UUID')
    }
    const page = await api(`/v1/workflows?${query}`)
    if (gen !== generation) return
    clearError()
    renderList(page.workflows, query.size > 1)
    updated('list-note')
  } catch (error) {
    if (gen === generation) showError(error)
  }
}

function renderList(workflows, filtered) {
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
  $('list-empty').textContent = filtered ? 'No workflow matches.' : 'No workflows yet.'
  $('workflows').parentElement.hidden = workflows.length === 0
}

// --- one workflow ---------------------------------------------------------------------------------

async function loadWorkflow(gen) {
  const { id } = current
  try {
    if (!UUID.test(id)) throw new ApiError(404, 'not_found', 'not a workflow id')
    const path = `/v1/workflows/${encodeURIComponent(id)}`
    const [wf, attempts, audit] = await Promise.all([
      api(path),
      api(`${path}/attempts`),
      api(`${path}/audit`),
    ])
    if (gen !== generation) return
    clearError()
    renderWorkflow(wf, attempts, audit)
    updated('wf-note')
    if (current.task) await loadTask(gen, wf)
    else $('task-panel').hidden = true
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
  $('timeline').replaceChildren()
  $('audit').tBodies[0].replaceChildren()
  $('task-panel').hidden = true
  for (const id of ['act-cancel', 'act-retry', 'act-event']) $(id).hidden = true
}

let shown = null

function renderWorkflow(wf, attempts, audit) {
  shown = wf
  document.title = `${wf.type} · equilateral-agents`
  $('wf-title').replaceChildren(wf.type, el('span', { class: 'version' }, ` v${wf.version}`))
  $('wf-status').hidden = false
  $('wf-status').className = `badge status-${wf.status}`
  $('wf-status').textContent = wf.status
  $('wf-status').dataset.status = wf.status

  const running = wf.status === 'running'
  $('act-cancel').hidden = !running
  $('act-retry').hidden = !(wf.status === 'failed' || wf.status === 'cancelled')
  $('act-event').hidden = !running

  const ms = span(wf.createdAt, wf.completedAt)
  const meta = [
    ['Id', el('code', {}, wf.id)],
    ['Correlation id', el('code', {}, wf.correlationId)],
    ['Created', when(wf.createdAt)],
    ['Completed', when(wf.completedAt)],
    ['Duration', wf.completedAt ? duration(ms) : `${duration(ms)} so far`],
    ['Input', el('code', { class: 'inline-json' }, truncate(JSON.stringify(wf.input ?? null), 200))],
  ]
  $('wf-meta').replaceChildren(
    ...meta.map(([term, value]) => el('div', {}, el('dt', {}, term), el('dd', {}, value))),
  )

  const problem = workflowProblem(wf)
  $('wf-error').hidden = !problem
  $('wf-error').textContent = problem

  $('graph').replaceChildren(renderGraph(wf.tasks))
  $('tasks').tBodies[0].replaceChildren(...wf.tasks.map(taskRow))
  $('timeline').replaceChildren(renderTimeline(wf, attempts.tasks))
  $('audit').tBodies[0].replaceChildren(...audit.entries.map((e) => auditRow(e, wf)))
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
    ? `waits for ${what} until ${new Date(t.wait.deadline).toLocaleString()} ${zoneOf(new Date(t.wait.deadline))}`
    : `waits for ${what}`
}

function taskHref(t) {
  return `#/workflows/${encodeURIComponent(current.id)}/tasks/${encodeURIComponent(t.key)}`
}

function taskRow(t) {
  const waits = waitingFor(t)
  return el(
    'tr',
    { 'data-task-key': t.key, 'data-status': t.status },
    el('td', { class: 'nowrap' }, el('a', { href: taskHref(t) }, el('code', {}, t.key))),
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

function auditRow(e, wf) {
  const task = e.taskId ? wf.tasks.find((t) => t.id === e.taskId) : null
  const details = e.data && Object.keys(e.data).length ? JSON.stringify(e.data) : ''
  return el(
    'tr',
    { 'data-action': e.action },
    el('td', { class: 'nowrap' }, at(e.at)),
    el('td', { class: 'nowrap' }, e.action),
    el('td', { class: 'nowrap' }, task ? el('code', {}, task.key) : '—'),
    el('td', {}, e.actor ?? '—'),
    el('td', { class: 'err' }, truncate(details, 300)),
  )
}

// --- the timeline: one bar per attempt ------------------------------------------------------------

const LANE_H = 24
const LABEL_W = 150

function renderTimeline(wf, attemptsByTask) {
  const byKey = new Map(attemptsByTask.map((t) => [t.key, t.attempts]))
  const lanes = wf.tasks.map((t) => ({ task: t, attempts: byKey.get(t.key) ?? [] }))
  const instants = lanes.flatMap((l) =>
    l.attempts.flatMap((a) => [a.queuedAt, a.startedAt, a.endedAt].filter(Boolean).map(Date.parse)),
  )
  if (instants.length === 0) return el('p', { class: 'empty' }, 'No attempt yet.')
  const start = Math.min(Date.parse(wf.createdAt), ...instants)
  const end = Math.max(wf.completedAt ? Date.parse(wf.completedAt) : Date.now(), ...instants)
  const width = Math.max(480, ($('timeline').clientWidth || 1100) - 16)
  const scale = (width - LABEL_W - 12) / Math.max(1, end - start)
  const x = (ms) => LABEL_W + (ms - start) * scale
  const height = lanes.length * LANE_H + 24
  const root = svg('svg', {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Timeline: ${lanes.reduce((n, l) => n + l.attempts.length, 0)} attempts over ${duration(end - start)}`,
  })
  lanes.forEach((lane, i) => {
    const y = i * LANE_H
    const g = svg('g', { class: 'lane', 'data-task-key': lane.task.key })
    g.append(svg('text', { class: 'lane-key', x: 4, y: y + 16 }, truncate(lane.task.key, 20)))
    for (const a of lane.attempts) {
      const queued = a.queuedAt ? Date.parse(a.queuedAt) : null
      const started = a.startedAt ? Date.parse(a.startedAt) : null
      const ended = a.endedAt
        ? Date.parse(a.endedAt)
        : wf.completedAt
          ? Date.parse(wf.completedAt)
          : Date.now()
      const title = [
        `${lane.task.key}, attempt ${a.attempt}: ${a.outcome}`,
        queued !== null && started !== null ? `waited ${duration(Math.max(0, started - queued))}` : null,
        started !== null ? `ran ${duration(Math.max(0, ended - started))}` : null,
        a.error ? errorText(a.error) : null,
      ].filter(Boolean)
      const bar = svg('g', {
        class: `attempt outcome-${a.outcome.replace(/\s+/g, '-')}`,
        'data-attempt': a.attempt,
        'data-outcome': a.outcome,
      })
      bar.append(svg('title', {}, title.join('\n')))
      if (queued !== null) {
        const to = started ?? ended
        bar.append(
          svg('rect', {
            class: 'wait',
            x: x(queued),
            y: y + 6,
            width: Math.max(1, x(to) - x(queued)),
            height: 12,
          }),
        )
      }
      if (started !== null) {
        bar.append(
          svg('rect', {
            class: 'run',
            x: x(started),
            y: y + 4,
            width: Math.max(2, x(ended) - x(started)),
            height: 16,
          }),
        )
      }
      g.append(bar)
    }
    root.append(g)
  })
  const axisY = lanes.length * LANE_H + 16
  root.append(
    svg(
      'text',
      { class: 'axis', x: LABEL_W, y: axisY },
      `${clock(new Date(start))} ${zoneOf(new Date(start))}`,
    ),
    svg('text', { class: 'axis', x: width - 4, y: axisY, 'text-anchor': 'end' }, `+${duration(end - start)}`),
  )
  return root
}

// --- one task: its data, result, error and attempts, and what can be done with it ----------------

async function loadTask(gen, wf) {
  const key = current.task
  const detail = await api(`/v1/workflows/${encodeURIComponent(wf.id)}/tasks/${encodeURIComponent(key)}`)
  if (gen !== generation) return
  const t = detail.task
  $('task-panel').hidden = false
  $('task-panel').dataset.taskKey = t.key
  $('task-title').replaceChildren('Task ', el('code', {}, t.key), ` · ${doer(t)}`)
  $('task-status').className = `badge status-${t.status}`
  $('task-status').textContent = t.status
  $('task-status').dataset.status = t.status
  $('task-data').textContent = pretty(t.data)
  $('task-result').textContent = pretty(t.result)
  $('task-error').textContent = t.error ? errorText(t.error) : '—'
  $('task-attempts').tBodies[0].replaceChildren(
    ...detail.attempts.map((a) =>
      el(
        'tr',
        { 'data-attempt': a.attempt, 'data-outcome': a.outcome },
        el('td', { class: 'num' }, String(a.attempt)),
        el('td', {}, a.outcome),
        el('td', {}, at(a.queuedAt)),
        el('td', {}, at(a.startedAt)),
        el('td', {}, at(a.endedAt)),
        el('td', { class: 'num' }, duration(span(a.queuedAt, a.startedAt))),
        el('td', { class: 'num' }, a.startedAt ? duration(span(a.startedAt, a.endedAt)) : '—'),
        el('td', {}, a.worker ?? '—'),
        el('td', { class: 'err' }, errorText(a.error)),
      ),
    ),
  )
  const actions = []
  if (t.status === 'waiting' && t.wait?.type === 'approval') {
    actions.push(
      actionButton('Approve', 'act-approve', () => decide(wf, t, true)),
      actionButton('Reject', 'act-reject', () => decide(wf, t, false), 'danger'),
    )
  }
  if (t.status === 'waiting' && t.wait?.type === 'event') {
    actions.push(actionButton(`Send “${t.wait.name}”`, 'act-send', () => sendEvent(wf, t.wait.name)))
  }
  if (wf.status !== 'running' && !t.wait) {
    actions.push(actionButton('Replay from here', 'act-replay', () => replay(wf, t), 'quiet'))
  }
  $('task-actions').replaceChildren(...actions)
}

function actionButton(label, id, onClick, kind = '') {
  const button = el('button', { type: 'button', id, class: kind }, label)
  button.addEventListener('click', onClick)
  return button
}

// --- dead letters ---------------------------------------------------------------------------------

async function loadDeadLetters(gen) {
  const query = new URLSearchParams({ limit: '100' })
  const agent = $('dead-agent').value.trim()
  if (agent) query.set('agent', agent)
  $('dead-redrive-agent').hidden = !agent
  try {
    const page = await api(`/v1/dead-letters?${query}`)
    if (gen !== generation) return
    clearError()
    const items = page.deadLetters ?? page.items ?? page.tasks ?? []
    $('dead').tBodies[0].replaceChildren(...items.map(deadRow))
    $('dead-empty').hidden = items.length > 0
    $('dead').parentElement.hidden = items.length === 0
    updated('dead-note')
  } catch (error) {
    if (gen === generation) showError(error)
  }
}

function deadRow(d) {
  const workflowId = d.workflowId
  const taskId = d.taskId ?? d.id
  const href = `#/workflows/${encodeURIComponent(workflowId)}${d.taskKey ? `/tasks/${encodeURIComponent(d.taskKey)}` : ''}`
  return el(
    'tr',
    { 'data-task-id': taskId, 'data-workflow-id': workflowId },
    el('td', {}, when(d.failedAt ?? d.completedAt)),
    el('td', { class: 'nowrap' }, d.agent ?? d.agentId ?? '—'),
    el('td', { class: 'nowrap' }, el('a', { href }, el('code', {}, d.taskKey ?? taskId.slice(0, 8)))),
    el('td', {}, el('code', { title: workflowId }, workflowId.slice(0, 8))),
    el('td', { class: 'err' }, errorText(d.error)),
    el(
      'td',
      {},
      actionButton('Redrive', `redrive-${taskId}`, () =>
        confirmThen({
          title: 'Redrive this task?',
          text: `Task ${d.taskKey ?? taskId} (agent ${d.agent ?? d.agentId ?? '?'}) gets a new attempt, and its workflow runs again.`,
          yes: 'Redrive',
          run: () => api('/v1/dead-letters/redrive', { method: 'POST', body: { taskId } }),
        }),
      ),
    ),
  )
}

// --- actions: each through the HTTP API, destructive ones after a confirmation --------------------

/**
 * Opens the confirmation dialog; `fields` are extra inputs ({ name, label, value?, multiline?,
 * required? }). On confirm, `run(values)` is called; its error is shown in the dialog, which stays
 * open. Resolves after the action (or the refusal). The page reads its state again after an action.
 */
function confirmThen({ title, text, yes, danger = false, fields = [], run }) {
  const dialog = $('confirm')
  $('confirm-title').textContent = title
  $('confirm-text').textContent = text
  $('confirm-yes').textContent = yes
  $('confirm-yes').className = danger ? 'danger' : ''
  $('confirm-error').hidden = true
  const inputs = fields.map((f) => {
    const input = f.multiline
      ? el('textarea', { name: f.name, rows: 4, spellcheck: 'false' })
      : el('input', { name: f.name, type: 'text', autocomplete: 'off', spellcheck: 'false' })
    input.value = f.value ?? ''
    if (f.required) input.required = true
    return { f, input }
  })
  $('confirm-fields').replaceChildren(
    ...inputs.map(({ f, input }) => el('label', { class: 'field' }, el('span', {}, f.label), input)),
  )
  return new Promise((resolve) => {
    const form = $('confirm-form')
    const cleanup = () => {
      form.removeEventListener('submit', onSubmit)
      $('confirm-no').removeEventListener('click', onNo)
      dialog.removeEventListener('cancel', onNo)
    }
    const onNo = () => {
      cleanup()
      dialog.close()
      resolve(false)
    }
    const onSubmit = async (event) => {
      event.preventDefault()
      const values = Object.fromEntries(inputs.map(({ f, input }) => [f.name, input.value]))
      $('confirm-yes').disabled = true
      try {
        await run(values)
        cleanup()
        dialog.close()
        resolve(true)
        reload()
      } catch (error) {
        $('confirm-error').textContent =
          error instanceof ApiError ? `${error.message} (${error.code})` : String(error?.message ?? error)
        $('confirm-error').hidden = false
      } finally {
        $('confirm-yes').disabled = false
      }
    }
    form.addEventListener('submit', onSubmit)
    $('confirm-no').addEventListener('click', onNo)
    dialog.addEventListener('cancel', onNo)
    dialog.showModal()
    ;(inputs[0]?.input ?? $('confirm-yes')).focus()
  })
}

const wfPath = (wf) => `/v1/workflows/${encodeURIComponent(wf.id)}`

function cancelWorkflow(wf) {
  return confirmThen({
    title: 'Cancel this workflow?',
    text: `“${wf.type}” stops: its running agents are aborted and its tasks that have not finished are cancelled.`,
    yes: 'Cancel workflow',
    danger: true,
    fields: [{ name: 'reason', label: 'Reason', value: 'cancelled from the console' }],
    run: ({ reason }) => api(`${wfPath(wf)}/cancel`, { method: 'POST', body: reason ? { reason } : {} }),
  })
}

function retryWorkflow(wf) {
  return confirmThen({
    title: 'Retry this workflow?',
    text: 'Its failed, skipped and cancelled tasks run again; completed tasks keep their results.',
    yes: 'Retry',
    run: () => api(`${wfPath(wf)}/retry`, { method: 'POST', body: { requestKey: crypto.randomUUID() } }),
  })
}

function replay(wf, t) {
  return confirmThen({
    title: `Replay from “${t.key}”?`,
    text: `A new workflow of type “${wf.type}” starts, reusing the results of the tasks before “${t.key}” and running it and everything after it again.`,
    yes: 'Replay',
    run: async () => {
      const started = await api(`${wfPath(wf)}/replay`, {
        method: 'POST',
        body: { from: t.key, requestKey: crypto.randomUUID() },
      })
      location.hash = `#/workflows/${encodeURIComponent(started.id)}`
    },
  })
}

function decide(wf, t, approved) {
  return confirmThen({
    title: approved ? `Approve “${t.wait.name}”?` : `Reject “${t.wait.name}”?`,
    text: approved ? 'The workflow goes on.' : 'The workflow fails with your comment as the reason.',
    yes: approved ? 'Approve' : 'Reject',
    danger: !approved,
    fields: [
      {
        name: 'approver',
        label: 'Your name',
        value: sessionStorage.getItem(APPROVER_STORAGE) ?? '',
        required: true,
      },
      { name: 'comment', label: 'Comment', multiline: true },
    ],
    run: ({ approver, comment }) => {
      sessionStorage.setItem(APPROVER_STORAGE, approver)
      return api(`${wfPath(wf)}/approvals/${encodeURIComponent(t.wait.name)}`, {
        method: 'POST',
        body: { approved, approver, ...(comment ? { comment } : {}) },
      })
    },
  })
}

function sendEvent(wf, name = '') {
  return confirmThen({
    title: 'Send an event',
    text: 'Delivered to the task that waits for it (or kept until one does).',
    yes: 'Send',
    fields: [
      { name: 'name', label: 'Event name', value: name, required: true },
      { name: 'key', label: 'Match key (optional)' },
      { name: 'payload', label: 'Payload (JSON, optional)', multiline: true },
    ],
    run: ({ name: eventName, key, payload }) => {
      let parsed
      if (payload.trim()) {
        try {
          parsed = JSON.parse(payload)
        } catch {
          throw new Error('the payload is not valid JSON')
        }
      }
      return api(`${wfPath(wf)}/events`, {
        method: 'POST',
        body: {
          eventId: crypto.randomUUID(),
          name: eventName,
          actor: 'console',
          ...(key ? { key } : {}),
          ...(parsed !== undefined ? { payload: parsed } : {}),
        },
      })
    },
  })
}

// --- live: server-sent events read with fetch() ---------------------------------------------------

let live = null

/** Follows /v1/events while signed in: a change of a workflow on screen reads it again. */
function startLive() {
  if (live) return
  const state = { abort: new AbortController(), lastId: null, pending: null, delay: 500 }
  live = state
  void (async () => {
    while (live === state) {
      try {
        await stream(state)
        state.delay = 500
      } catch (error) {
        if (live !== state) return
        if (error instanceof ApiError && error.status === 401) {
          showError(error)
          return
        }
      }
      if (live !== state) return
      setLive('down', 'Reconnecting…')
      await new Promise((resolve) => setTimeout(resolve, state.delay))
      state.delay = Math.min(10_000, state.delay * 2)
    }
  })()
}

function stopLive() {
  if (!live) return
  live.abort.abort()
  live = null
  setLive('off', '')
}

function setLive(state, text) {
  $('live').dataset.state = state
  $('live').textContent = text
}

async function stream(state) {
  const headers = { authorization: authHeader(), accept: 'text/event-stream' }
  if (state.lastId) headers['last-event-id'] = state.lastId
  const res = await fetch('/v1/events', { headers, cache: 'no-store', signal: state.abort.signal })
  if (!res.ok || !res.body) {
    const body = await res.json().catch(() => null)
    throw new ApiError(res.status, body?.code ?? 'http_error', body?.detail ?? res.statusText)
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += value
    let end
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '')
      const event = { event: 'message', data: '', id: null }
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'data') event.data += event.data ? `\n${text}` : text
        else if (field === 'event') event.event = text
        else if (field === 'id') event.id = text
      }
      if (event.id) state.lastId = event.id
      onEvent(state, event)
    }
  }
}

function onEvent(state, event) {
  if (event.event === 'ready') {
    setLive('up', 'Live')
    reload() // changes from here on are notified; read what happened before
  } else if (event.event === 'resync') {
    reload()
  } else if (event.event === 'progress') {
    let data
    try {
      data = JSON.parse(event.data)
    } catch {
      return
    }
    const mine =
      current.view === 'list' ||
      current.view === 'dead' ||
      (current.view === 'workflow' && (data.workflows === '*' || data.workflows.includes(current.id)))
    if (!mine) return
    // Several notifications in a burst are read once.
    if (state.pending) return
    state.pending = setTimeout(() => {
      state.pending = null
      reload()
    }, COALESCE_MS)
  }
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
  stopLive()
  location.hash = '#/'
  route()
})

$('find-form').addEventListener('submit', (event) => {
  event.preventDefault()
  if (location.hash !== '#/' && location.hash !== '') location.hash = '#/'
  else route()
})
$('filter-form').addEventListener('submit', (event) => {
  event.preventDefault()
  $('find-value').value = ''
  route()
})
$('status-filter').addEventListener('change', () => {
  $('find-value').value = ''
  route()
})
$('clear-filters').addEventListener('click', () => {
  for (const id of ['find-value', 'type-filter', 'since-filter', 'until-filter']) $(id).value = ''
  $('status-filter').value = ''
  route()
})

$('graph').addEventListener('click', (event) => {
  const node = event.target instanceof Element ? event.target.closest('[data-task-key]') : null
  if (node) location.hash = taskHref({ key: node.getAttribute('data-task-key') })
})
$('graph').addEventListener('keydown', (event) => {
  const node = event.target instanceof Element ? event.target.closest('[data-task-key]') : null
  if (node && (event.key === 'Enter' || event.key === ' ')) {
    event.preventDefault()
    location.hash = taskHref({ key: node.getAttribute('data-task-key') })
  }
})
$('task-close').addEventListener('click', () => {
  location.hash = `#/workflows/${encodeURIComponent(current.id)}`
})
$('act-cancel').addEventListener('click', () => shown && cancelWorkflow(shown))
$('act-retry').addEventListener('click', () => shown && retryWorkflow(shown))
$('act-event').addEventListener('click', () => shown && sendEvent(shown))

$('dead-apply').addEventListener('click', () => route())
$('dead-redrive-agent').addEventListener('click', () => {
  const agent = $('dead-agent').value.trim()
  if (!agent) return
  void confirmThen({
    title: `Redrive every dead letter of “${agent}”?`,
    text: 'Each of its tasks that failed for good gets one new attempt, and its workflow runs again.',
    yes: 'Redrive all',
    danger: true,
    run: () => api('/v1/dead-letters/redrive', { method: 'POST', body: { agent } }),
  })
})

$('zone').textContent = `times in ${ZONE}`
window.addEventListener('hashchange', route)

route()
