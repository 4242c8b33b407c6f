// automation-gateway job console. Plain ES module: no framework, no build step, no third-party code.
//
// Rules this file keeps (the page is served with a strict Content-Security-Policy):
// - no inline script, no inline style: looks come from classes in app.css, handlers from addEventListener;
// - every piece of data reaches the DOM through textContent or setAttribute, never innerHTML;
// - the only secret is the API token the user types; it lives in sessionStorage and is only ever sent
//   as `Authorization: Bearer <token>` to this origin.
//
// Views (hash routing): `#/` the job list, `#/jobs/<id>` one job.
// Live updates come from the SSE endpoints, read with fetch() and a ReadableStream parser because
// EventSource cannot send an Authorization header.

const TOKEN_KEY = 'automation-gateway.token';
const STATUSES = ['PENDING', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELED'];
const TERMINAL = new Set(['SUCCESS', 'FAILED', 'CANCELED']);
const TERMINAL_EVENTS = new Set(['finished', 'canceled']);
const PAGE_SIZE = 50;
const STATS_EVERY_MS = 10000;
const STATS_MIN_GAP_MS = 1000;
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const AUTH_MESSAGE = 'Authentication required: enter a token';
const FORBIDDEN_MESSAGE = 'Forbidden: this token may not do that';

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------ DOM

/** Makes an element. attrs: `class`, `text`, anything else via setAttribute; children: nodes or text. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function pad(n, w = 2) {
  return String(n).padStart(w, '0');
}

/** RFC 3339 -> "YYYY-MM-DD HH:MM:SS.mmm" in local time (the raw value stays in datetime/title). */
function formatTime(iso, short = false) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return short ? clock : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
}

/** A <time> element; `short` shows the clock time only (the full value is in its title). */
function timeEl(iso, short = false) {
  if (!iso) return el('span', { class: 'muted', text: '—' });
  return el('time', { datetime: iso, title: iso, text: formatTime(iso, short) });
}

function statusBadge(status, attrs = {}) {
  const s = String(status || '');
  return el('span', { class: `status status-${STATUSES.includes(s) ? s : 'unknown'}`, 'data-status': s, text: s || '?', ...attrs });
}

function setStatusBadge(node, status) {
  const s = String(status || '');
  node.className = `status status-${STATUSES.includes(s) ? s : 'unknown'}`;
  node.dataset.status = s;
  node.textContent = s || '?';
}

function json(v) {
  try {
    return JSON.stringify(v, null, 2);
  } catch {
    return String(v);
  }
}

/** Only http(s) links are ever made clickable (no javascript: or data: URLs from data). */
function safeHttpUrl(u) {
  if (typeof u !== 'string' || !u) return null;
  try {
    const url = new URL(u);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

// ----------------------------------------------------------------------------------------- token

function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function setToken(t) {
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token just does not survive a reload */
  }
}

function authHeaders(extra = {}) {
  const h = { ...extra };
  const t = getToken();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

// ------------------------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, problem, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem;
  }
}

function problemMessage(status, problem) {
  if (status === 401) return AUTH_MESSAGE;
  if (status === 403) return FORBIDDEN_MESSAGE;
  if (problem && typeof problem === 'object') {
    const parts = [problem.title, problem.detail].filter((x) => typeof x === 'string' && x);
    if (parts.length) return `${status}: ${parts.join(' — ')}`;
  }
  return `HTTP ${status}`;
}

async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
      credentials: 'same-origin',
      redirect: 'error',
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, null, `The gateway did not answer (${e && e.message ? e.message : e})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) throw new ApiError(res.status, data, problemMessage(res.status, data));
  return { status: res.status, data };
}

// ----------------------------------------------------------------------------------------- alert

let alertKind = '';

function showAlert(message, kind = 'error') {
  const box = $('alert');
  const was = alertKind;
  // The same message again (e.g. the 10 s statistics refresh) is not announced again.
  if (was === kind && box.textContent === message) return;
  alertKind = kind;
  box.replaceChildren(el('p', { text: message }));
  box.dataset.kind = kind;
  box.classList.add('shown');
  if (kind === 'auth' && was !== 'auth') {
    const input = $('token-input');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

function clearAlert() {
  alertKind = '';
  const box = $('alert');
  box.replaceChildren();
  delete box.dataset.kind;
  box.classList.remove('shown');
  $('token-input').removeAttribute('aria-invalid');
}

/** Reports a failed request. Returns true when it was shown (false for an abort). */
function report(err, what) {
  if (!err || err.name === 'AbortError') return false;
  if (err instanceof ApiError && err.status === 401) {
    showAlert(AUTH_MESSAGE, 'auth');
  } else if (err instanceof ApiError && err.status === 403) {
    showAlert(`${FORBIDDEN_MESSAGE} (${what}).`, 'forbidden');
  } else {
    showAlert(`${what}: ${err.message || err}`);
  }
  return true;
}

// ------------------------------------------------------------------------------------------- SSE

/**
 * The text/event-stream format (WHATWG HTML "server-sent events"), fed chunks of decoded text.
 * Calls onEvent({id, event, data}) per dispatched event and onComment(text) per comment line.
 */
export class SseParser {
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buf = '';
    this.data = [];
    this.event = '';
    this.lastId = null;
    this.retry = null;
    this.first = true;
    this.skipLF = false;
  }

  push(text) {
    if (this.first && text) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      this.first = false;
    }
    // A CR that ended the previous chunk may be the first half of a CRLF.
    if (this.skipLF && text) {
      if (text[0] === '\n') text = text.slice(1);
      this.skipLF = false;
    }
    const b = this.buf + text;
    let start = 0;
    for (let i = 0; i < b.length; i += 1) {
      const c = b[i];
      if (c !== '\n' && c !== '\r') continue;
      this.line(b.slice(start, i));
      if (c === '\r') {
        if (i + 1 === b.length) this.skipLF = true;
        else if (b[i + 1] === '\n') i += 1;
      }
      start = i + 1;
    }
    this.buf = b.slice(start);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line[0] === ':') {
      this.onComment(line.slice(1));
      return;
    }
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
    }
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id') {
      if (!value.includes('\0')) this.lastId = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.retry = Number(value);
    }
  }

  dispatch() {
    const data = this.data;
    const event = this.event;
    this.data = [];
    this.event = '';
    if (!data.length) return;
    this.onEvent({ id: this.lastId, event: event || 'message', data: data.join('\n') });
  }
}

/**
 * One SSE subscription over fetch(), reconnecting with Last-Event-ID and exponential backoff
 * (1 s, 2 s, 4 s ... 30 s, with jitter) after a drop. 401/403/404 stop it (onState('error', err)).
 * onEnd(): called when the server ended the response; return false to stay closed.
 */
class LiveStream {
  constructor({ url, onEvent, onState = () => {}, onEnd = () => true, lastEventId = null }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.onEnd = onEnd;
    this.lastEventId = lastEventId;
    this.failures = 0;
    this.connections = 0;
    this.stopped = true;
    this.ctrl = null;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }

  async connect() {
    if (this.stopped) return;
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (this.lastEventId !== null && this.lastEventId !== '') headers['Last-Event-ID'] = String(this.lastEventId);
    this.onState('connecting');
    let res;
    try {
      res = await fetch(this.url, { headers, signal: ctrl.signal, cache: 'no-store', credentials: 'same-origin', redirect: 'error' });
    } catch (e) {
      if (ctrl.signal.aborted || this.stopped) return;
      this.retryLater();
      return;
    }
    if (!res.ok) {
      let problem = null;
      try {
        problem = await res.json();
      } catch {
        problem = null;
      }
      if (ctrl.signal.aborted || this.stopped) return;
      const err = new ApiError(res.status, problem, problemMessage(res.status, problem));
      if ([400, 401, 403, 404].includes(res.status)) {
        this.stopped = true;
        this.onState('error', err);
      } else {
        this.retryLater();
      }
      return;
    }
    this.connections += 1;
    this.onState('open', { reconnected: this.connections > 1 });
    const parser = new SseParser((ev) => {
      if (ev.id !== null) this.lastEventId = ev.id;
      this.onEvent(ev);
    });
    try {
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (value) {
          this.failures = 0; // data (events or heartbeats) arrived: the connection is healthy
          parser.push(value);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted || this.stopped) return;
    }
    if (ctrl.signal.aborted || this.stopped) return;
    if (this.onEnd() === false) {
      this.stopped = true;
      this.onState('closed');
      return;
    }
    this.retryLater();
  }

  retryLater() {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.failures);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.failures += 1;
    this.onState('reconnecting', { delay });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }
}

function parseEvent(ev) {
  try {
    const e = JSON.parse(ev.data);
    return e && typeof e === 'object' ? e : null;
  } catch {
    return null;
  }
}

// ----------------------------------------------------------------------------------------- stats

const stats = { timer: null, pending: null, last: 0, inFlight: false };

async function loadStats() {
  if (stats.inFlight) return;
  stats.inFlight = true;
  stats.last = Date.now();
  try {
    const { data } = await api('/v1/stats');
    renderStats(data || {});
  } catch (e) {
    // Figures of a previous token must not stay on screen for one that may not read them.
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) renderStats({});
    report(e, 'Loading the statistics');
  } finally {
    stats.inFlight = false;
  }
}

/** At most one refresh per STATS_MIN_GAP_MS, the last one trailing. */
function statsSoon() {
  if (stats.pending) return;
  const wait = Math.max(0, STATS_MIN_GAP_MS - (Date.now() - stats.last));
  stats.pending = setTimeout(() => {
    stats.pending = null;
    loadStats();
  }, wait);
}

function renderStats(data) {
  const depth = data.queue_depth;
  $('queue-depth').textContent = typeof depth === 'number' ? String(depth) : '–';
  const list = $('stats-actions');
  const byAction = data.by_action && typeof data.by_action === 'object' ? data.by_action : {};
  const cards = Object.keys(byAction).sort().map((name) => {
    const counts = byAction[name] || {};
    const dl = el('dl', { class: 'counts' });
    for (const s of STATUSES) {
      dl.append(el('div', { class: `count count-${s}` },
        el('dt', { text: s }),
        el('dd', { 'data-testid': 'stat-count', 'data-status': s, text: String(counts[s] ?? 0) })));
    }
    return el('li', { class: 'stat-card', 'data-testid': 'stat-action', 'data-action': name },
      el('h3', { class: 'stat-name', text: name }), dl);
  });
  list.replaceChildren(...cards);
}

// ------------------------------------------------------------------------------------- job list

const list = {
  rows: new Map(), // job_id -> {tr, statusCell, lastEventId}
  nextCursor: null,
  loaded: false,
  error: '', // why the last load failed
  needsLoad: true, // load when the list view is next shown
  buffer: [], // live events that arrived while the list was loading, applied once it is in
  gen: 0,
  applied: { status: '', action: '', target: '', requested_by: '' },
  fetching: new Map(), // job_id -> live events of that job that arrived while it was being read
};

function currentFilters() {
  return {
    status: $('filter-status').value,
    action: $('filter-action').value,
    target: $('filter-target').value.trim(),
    requested_by: $('filter-requested-by').value.trim(),
  };
}

function listQuery(filters, cursor) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  q.set('limit', String(PAGE_SIZE));
  if (cursor) q.set('cursor', cursor);
  return `/v1/jobs?${q}`;
}

function matches(filters, job) {
  return (!filters.status || job.status === filters.status) &&
    (!filters.action || job.action === filters.action) &&
    (!filters.target || job.target === filters.target) &&
    (!filters.requested_by || job.requested_by === filters.requested_by);
}

function jobRow(job, { fresh = false } = {}) {
  const id = String(job.job_id);
  const status = statusBadge(job.status, { 'data-testid': 'job-status' });
  const tr = el('tr', { class: fresh ? 'job-row fresh' : 'job-row', 'data-testid': 'job-row', 'data-job-id': id, 'data-status': job.status },
    el('td', { class: 'cell-id', 'data-label': 'Job' },
      el('a', { href: `#/jobs/${encodeURIComponent(id)}`, class: 'mono job-link', 'data-testid': 'job-link', 'aria-label': `Job ${id}` }, id)),
    el('td', { 'data-label': 'Action', 'data-testid': 'job-action', text: job.action }),
    el('td', { 'data-label': 'Target', 'data-testid': 'job-target', class: 'wrap', text: job.target }),
    el('td', { 'data-label': 'Status' }, status),
    el('td', { 'data-label': 'Requested by', 'data-testid': 'job-requested-by', class: 'wrap', text: job.requested_by }),
    el('td', { 'data-label': 'Created' }, timeEl(job.created_at)));
  list.rows.set(id, { tr, status, lastEventId: -1 });
  return tr;
}

function updateListInfo() {
  const n = list.rows.size;
  $('list-empty').hidden = n !== 0 || !list.loaded || !!list.error;
  $('load-more').hidden = !list.nextCursor;
  let info = 'Loading…';
  if (list.error) info = `Jobs not loaded: ${list.error}`;
  else if (list.loaded) info = `${n} job${n === 1 ? '' : 's'} shown${list.nextCursor ? ', more available' : ''}.`;
  $('list-info').textContent = info;
}

async function loadList() {
  const gen = ++list.gen;
  const filters = currentFilters();
  list.applied = filters;
  list.loaded = false;
  list.error = '';
  list.needsLoad = false;
  list.buffer = [];
  list.fetching.clear();
  list.nextCursor = null;
  updateListInfo();
  try {
    const { data } = await api(listQuery(filters, null));
    if (gen !== list.gen) return;
    list.rows.clear();
    const items = Array.isArray(data && data.items) ? data.items : [];
    $('job-rows').replaceChildren(...items.map((j) => jobRow(j)));
    list.nextCursor = (data && data.next_cursor) || null;
    list.loaded = true;
    if (alertKind === 'auth' || alertKind === 'forbidden') clearAlert();
    // Events that happened while the page was read, in order: the last one of each job wins.
    const buffered = list.buffer;
    list.buffer = [];
    for (const ev of buffered) applyToList(ev);
  } catch (e) {
    if (gen !== list.gen) return;
    list.rows.clear();
    $('job-rows').replaceChildren();
    list.loaded = true;
    list.buffer = [];
    if (e && e.name !== 'AbortError') list.error = e.message || String(e);
    report(e, 'Loading the jobs');
  }
  updateListInfo();
}

async function loadMore() {
  const cursor = list.nextCursor;
  if (!cursor) return;
  const gen = list.gen;
  const btn = $('load-more');
  btn.disabled = true;
  try {
    const { data } = await api(listQuery(list.applied, cursor));
    if (gen !== list.gen) return;
    const body = $('job-rows');
    for (const j of Array.isArray(data && data.items) ? data.items : []) {
      if (!list.rows.has(String(j.job_id))) body.append(jobRow(j));
    }
    list.nextCursor = (data && data.next_cursor) || null;
  } catch (e) {
    report(e, 'Loading more jobs');
  } finally {
    btn.disabled = false;
    updateListInfo();
  }
}

/** Inserts a job that appeared live at its place (newest first: job ids are UUIDv7, time-ordered). */
function insertRow(job) {
  const id = String(job.job_id);
  if (list.rows.has(id)) return;
  const body = $('job-rows');
  const rows = [...body.children];
  const before = rows.find((tr) => String(tr.dataset.jobId) < id);
  if (!before && list.nextCursor) return; // older than everything shown: it comes with "Load more"
  const tr = jobRow(job, { fresh: true });
  body.insertBefore(tr, before || null);
  updateListInfo();
}

async function fetchAndInsert(jobId, gen) {
  if (list.fetching.has(jobId)) return;
  list.fetching.set(jobId, []);
  try {
    const { data } = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    if (gen !== list.gen || !live.applying) return;
    if (data && matches(list.applied, data)) {
      insertRow(data);
      // Events that came while the job was read, in order: the last one wins.
      const later = list.fetching.get(jobId) || [];
      list.fetching.delete(jobId);
      for (const ev of later) applyToList(ev);
    }
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) report(e, 'Loading a new job');
  } finally {
    list.fetching.delete(jobId);
  }
}

function applyToList(ev) {
  if (!list.loaded) {
    if (list.buffer.length < 5000) list.buffer.push(ev);
    return;
  }
  const id = String(ev.job_id || '');
  if (!id) return;
  const row = list.rows.get(id);
  const eid = typeof ev.id === 'number' ? ev.id : Number(ev.id);
  if (row) {
    if (Number.isFinite(eid) && eid <= row.lastEventId) return;
    if (Number.isFinite(eid)) row.lastEventId = eid;
    if (ev.status) {
      setStatusBadge(row.status, ev.status);
      row.tr.dataset.status = ev.status;
      row.tr.classList.toggle('stale', !!list.applied.status && list.applied.status !== ev.status);
    }
    return;
  }
  if (list.fetching.has(id)) {
    list.fetching.get(id).push(ev);
    return;
  }
  const f = list.applied;
  if (f.action && ev.action !== f.action) return;
  if (f.target && ev.target !== f.target) return;
  if (f.status) {
    if (ev.status !== f.status) return;
  } else if (ev.event !== 'created') {
    return; // without a status filter, only a new job can join the list
  }
  fetchAndInsert(id, list.gen);
}

// ---------------------------------------------------------------------------------- live stream

const live = { stream: null, paused: false, applying: false, lastEventId: null };

function setLiveStatus(state, text) {
  const s = $('live-status');
  s.dataset.state = state;
  s.textContent = `Live updates: ${text}`;
}

function startLive() {
  if (live.stream) {
    live.lastEventId = live.stream.lastEventId;
    live.stream.stop();
  }
  live.applying = true;
  const stream = new LiveStream({
    url: '/v1/events/stream',
    lastEventId: live.lastEventId,
    onEvent: (raw) => {
      const ev = parseEvent(raw);
      if (!ev || stream !== live.stream) return;
      statsSoon();
      applyToList(ev);
    },
    onState: (state, info) => {
      if (stream !== live.stream) return;
      if (state === 'connecting') setLiveStatus('connecting', 'connecting…');
      else if (state === 'open') {
        setLiveStatus('open', 'on');
        // Reconnected without a position to resume from: events may have been missed.
        if (info && info.reconnected && (stream.lastEventId === null || stream.lastEventId === '')) loadList();
      } else if (state === 'reconnecting') setLiveStatus('reconnecting', `reconnecting in ${Math.ceil(info.delay / 1000)} s…`);
      else if (state === 'error') {
        setLiveStatus('error', info && info.status === 401 ? 'off (authentication required)' : `off (${info ? info.message : 'error'})`);
        report(info, 'Live updates');
      } else if (state === 'closed') setLiveStatus('closed', 'off');
    },
  });
  live.stream = stream;
  stream.start();
}

function pauseLive() {
  live.paused = true;
  live.applying = false;
  if (live.stream) {
    live.lastEventId = live.stream.lastEventId;
    live.stream.stop();
    live.stream = null;
  }
  setLiveStatus('paused', 'paused');
  const b = $('live-toggle');
  b.textContent = 'Resume live updates';
}

function resumeLive() {
  live.paused = false;
  const b = $('live-toggle');
  b.textContent = 'Pause live updates';
  // With a position, the stream replays what happened while paused; without one, reload the list.
  if (live.lastEventId === null || live.lastEventId === '') loadList();
  startLive();
}

// -------------------------------------------------------------------------------------- job page

let jobCtx = null;

const FIELD_ORDER = ['job_id', 'action', 'target', 'status', 'requested_by', 'submitted_by', 'created_at',
  'started_at', 'finished_at', 'attempts', 'error', 'cancel_requested', 'callback_url', 'parameters',
  'external', 'result'];
const FIELD_LABELS = {
  job_id: 'Job id', action: 'Action', target: 'Target', status: 'Status', requested_by: 'Requested by',
  submitted_by: 'Submitted by', created_at: 'Created', started_at: 'Started', finished_at: 'Finished',
  attempts: 'Attempts', error: 'Error', cancel_requested: 'Cancel requested', callback_url: 'Callback URL',
  parameters: 'Parameters', external: 'External run', result: 'Result',
};
const TIME_FIELDS = new Set(['created_at', 'started_at', 'finished_at']);

function fieldValue(key, v) {
  if (key === 'status') return statusBadge(v);
  if (TIME_FIELDS.has(key)) return timeEl(v);
  if (v === null || v === undefined) return el('span', { class: 'muted', text: '—' });
  if (typeof v === 'object') return el('pre', { class: 'json', tabindex: '0', 'aria-label': `${FIELD_LABELS[key] || key} (JSON)`, text: json(v) });
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  return el('span', { class: key.endsWith('_id') || key === 'callback_url' ? 'mono wrap' : 'wrap', text: String(v) });
}

function renderJobFields(job) {
  const keys = [...FIELD_ORDER.filter((k) => k in job), ...Object.keys(job).filter((k) => !FIELD_ORDER.includes(k)).sort()];
  const items = keys.map((k) =>
    el('div', { class: 'field-row', 'data-testid': 'job-field', 'data-field': k },
      el('dt', { text: FIELD_LABELS[k] || k }),
      el('dd', { 'data-value': typeof job[k] === 'object' ? null : String(job[k]) }, fieldValue(k, job[k]))));
  $('job-fields').replaceChildren(...items);
}

function renderJob(job) {
  if (!jobCtx) return;
  jobCtx.job = job;
  $('job-title-id').textContent = String(job.job_id);
  setStatusBadge($('job-status-badge'), job.status);
  renderJobFields(job);
  const result = $('job-result');
  result.textContent = json(job.result === undefined ? null : job.result);
  const ext = $('job-external');
  const x = job.external;
  if (x && typeof x === 'object') {
    const href = safeHttpUrl(x.url);
    const label = `${x.system || 'run'} ${x.id ?? ''}`.trim();
    const parts = [];
    if (href) {
      parts.push(el('a', { href, rel: 'noopener noreferrer', target: '_blank', 'data-testid': 'external-link' }, `Open ${label}`));
    } else {
      parts.push(el('span', { text: label }));
      if (x.url) parts.push(el('span', { class: 'muted mono wrap', text: ` (${x.url})` }));
    }
    ext.replaceChildren(...parts);
  } else {
    ext.replaceChildren('None.');
  }
  const cancellable = job.status === 'PENDING' || job.status === 'RUNNING';
  const btn = $('cancel-button');
  btn.hidden = !cancellable;
  btn.disabled = !cancellable || !!job.cancel_requested;
  if (job.cancel_requested && cancellable) btn.textContent = 'Cancel requested…';
  else btn.textContent = 'Cancel job…';
}

function eventSummary(e) {
  const d = e.detail && typeof e.detail === 'object' ? e.detail : {};
  const bits = [];
  for (const [k, v] of Object.entries(d)) {
    if (v === null || v === undefined) continue;
    bits.push(`${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
  }
  return bits.join(', ');
}

function eventItem(e) {
  return el('li', { class: `event event-${String(e.event || '').replace(/[^a-z_]/g, '')}`, 'data-testid': 'job-event', 'data-event': e.event, 'data-event-id': e.id },
    el('div', { class: 'event-head' },
      timeEl(e.at),
      el('strong', { class: 'event-name', text: e.event }),
      e.status ? statusBadge(e.status) : null,
      el('span', { class: 'muted', text: e.actor ? `by ${e.actor}` : '' })),
    (() => {
      const s = eventSummary(e);
      return s ? el('div', { class: 'event-detail wrap', text: s }) : null;
    })());
}

/** Attempts and their outcomes, rebuilt from the event log. */
function attemptsFrom(events) {
  const map = new Map();
  const get = (n) => {
    if (!map.has(n)) map.set(n, { n, started: null, ended: null, outcome: '', error: null });
    return map.get(n);
  };
  let current = null;
  for (const e of events) {
    const d = e.detail && typeof e.detail === 'object' ? e.detail : {};
    const n = typeof d.attempt === 'number' ? d.attempt : current;
    switch (e.event) {
      case 'claimed':
      case 'lease_recovered':
        if (n !== null) {
          const a = get(n);
          if (!a.started) a.started = e.at;
          a.outcome = e.event === 'lease_recovered' ? 'running (recovered)' : 'running';
          current = n;
        }
        break;
      case 'attempt_failed':
        if (n !== null) Object.assign(get(n), { ended: e.at, outcome: 'failed', error: d.error ?? null });
        break;
      case 'lease_lost':
        if (n !== null) Object.assign(get(n), { ended: e.at, outcome: 'lease lost' });
        break;
      case 'finished':
        if (n !== null) Object.assign(get(n), { ended: e.at, outcome: String(d.status || e.status || 'finished'), error: d.error ?? null });
        break;
      case 'canceled':
        if (n !== null) Object.assign(get(n), { ended: e.at, outcome: 'canceled' });
        break;
      default:
        break;
    }
  }
  return [...map.values()].sort((a, b) => a.n - b.n);
}

function renderAttempts(events) {
  const rows = attemptsFrom(events).map((a) =>
    el('tr', { 'data-testid': 'job-attempt', 'data-attempt': a.n },
      el('td', { 'data-label': 'Attempt', text: String(a.n) }),
      el('td', { 'data-label': 'Started' }, timeEl(a.started, true)),
      el('td', { 'data-label': 'Ended' }, timeEl(a.ended, true)),
      el('td', { 'data-label': 'Outcome', text: a.outcome }),
      el('td', { 'data-label': 'Error', class: 'wrap', text: a.error ?? '' })));
  $('job-attempts').replaceChildren(...rows);
  $('job-attempts-empty').hidden = rows.length > 0;
}

function addJobEvents(ctx, events) {
  let added = false;
  for (const e of events) {
    if (!e || typeof e !== 'object') continue;
    const id = typeof e.id === 'number' ? e.id : Number(e.id);
    if (Number.isFinite(id)) {
      if (ctx.seen.has(id)) continue;
      ctx.seen.add(id);
      if (ctx.lastId === null || id > ctx.lastId) ctx.lastId = id;
    }
    ctx.events.push(e);
    if (TERMINAL_EVENTS.has(e.event)) ctx.terminal = true;
    added = true;
  }
  if (!added) return;
  ctx.events.sort((a, b) => (Number(a.id) || 0) - (Number(b.id) || 0));
  $('job-events').replaceChildren(...ctx.events.map(eventItem));
  renderAttempts(ctx.events);
}

async function refreshJob(ctx) {
  if (ctx.refreshing) {
    ctx.refreshAgain = true;
    return;
  }
  ctx.refreshing = true;
  try {
    const { data } = await api(`/v1/jobs/${encodeURIComponent(ctx.id)}`, { signal: ctx.ctrl.signal });
    if (jobCtx === ctx) renderJob(data);
  } catch (e) {
    if (jobCtx === ctx) report(e, 'Loading the job');
  } finally {
    ctx.refreshing = false;
    if (ctx.refreshAgain && jobCtx === ctx) {
      ctx.refreshAgain = false;
      refreshJob(ctx);
    }
  }
}

async function loadDeliveries(ctx) {
  clearTimeout(ctx.deliveriesTimer);
  const box = $('job-deliveries');
  try {
    const { data } = await api(`/v1/jobs/${encodeURIComponent(ctx.id)}/deliveries`, { signal: ctx.ctrl.signal });
    if (jobCtx !== ctx) return;
    renderDeliveries(data || {});
    if (data && data.state === 'pending') ctx.deliveriesTimer = setTimeout(() => loadDeliveries(ctx), 5000);
  } catch (e) {
    if (jobCtx !== ctx || e.name === 'AbortError') return;
    box.replaceChildren(el('p', { class: 'info', text: `Deliveries unavailable: ${e.message}` }));
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) report(e, 'Loading the deliveries');
  }
}

function renderDeliveries(d) {
  const box = $('job-deliveries');
  if (!d.callback_url) {
    box.replaceChildren(el('p', { class: 'info', 'data-testid': 'deliveries-none', text: 'No callback URL: nothing is delivered.' }));
    return;
  }
  const attempts = Array.isArray(d.attempts) ? d.attempts : [];
  const summary = el('dl', { class: 'fields compact' },
    el('div', { class: 'field-row' }, el('dt', { text: 'Callback URL' }), el('dd', { class: 'mono wrap', text: d.callback_url })),
    el('div', { class: 'field-row' }, el('dt', { text: 'State' }), el('dd', { 'data-testid': 'delivery-state', text: d.state ?? '—' })),
    el('div', { class: 'field-row' }, el('dt', { text: 'Next attempt' }), el('dd', {}, timeEl(d.next_attempt_at))));
  const table = el('table', { class: 'attempts' },
    el('thead', {}, el('tr', {},
      el('th', { scope: 'col', text: 'Try' }), el('th', { scope: 'col', text: 'At' }), el('th', { scope: 'col', text: 'HTTP status' }),
      el('th', { scope: 'col', text: 'Latency' }), el('th', { scope: 'col', text: 'Error' }))),
    el('tbody', {}, ...attempts.map((a) => el('tr', { 'data-testid': 'delivery-attempt' },
      el('td', { 'data-label': 'Try', text: String(a.attempt ?? '') }),
      el('td', { 'data-label': 'At' }, timeEl(a.at, true)),
      el('td', { 'data-label': 'HTTP status', text: a.status_code ?? '—' }),
      el('td', { 'data-label': 'Latency', text: a.latency_ms !== null && a.latency_ms !== undefined ? `${a.latency_ms} ms` : '—' }),
      el('td', { 'data-label': 'Error', class: 'wrap', text: a.error ?? '' })))));
  box.replaceChildren(summary, attempts.length ? el('div', { class: 'table-wrap' }, table) : el('p', { class: 'info', text: 'No try yet.' }));
}

function stopJob() {
  if (!jobCtx) return;
  const ctx = jobCtx;
  jobCtx = null;
  ctx.ctrl.abort();
  if (ctx.stream) ctx.stream.stop();
  clearTimeout(ctx.deliveriesTimer);
}

function setJobLive(text, state) {
  const p = $('job-live');
  p.textContent = text;
  p.dataset.state = state;
}

async function showJob(id) {
  stopJob();
  const ctx = { id, ctrl: new AbortController(), events: [], seen: new Set(), lastId: null, terminal: false, stream: null };
  jobCtx = ctx;
  $('job-title-id').textContent = id;
  setStatusBadge($('job-status-badge'), '');
  $('job-status-badge').textContent = '…';
  $('job-fields').replaceChildren();
  $('job-events').replaceChildren();
  $('job-attempts').replaceChildren();
  $('job-attempts-empty').hidden = true;
  $('job-result').textContent = '';
  $('job-external').textContent = '';
  $('job-deliveries').replaceChildren(el('p', { class: 'info', text: 'Loading…' }));
  $('cancel-button').hidden = true;
  $('job-message').hidden = true;
  $('job-body').hidden = false;
  setJobLive('', 'idle');

  let job;
  try {
    job = (await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: ctx.ctrl.signal })).data;
  } catch (e) {
    if (jobCtx !== ctx || e.name === 'AbortError') return;
    $('job-body').hidden = true;
    const msg = $('job-message');
    msg.hidden = false;
    if (e instanceof ApiError && e.status === 404) msg.textContent = 'No such job (or this token may not read it).';
    else if (e instanceof ApiError && e.status === 400) msg.textContent = 'That is not a job id.';
    else msg.textContent = e.message;
    $('job-status-badge').textContent = '';
    report(e, 'Loading the job');
    return;
  }
  if (jobCtx !== ctx) return;
  renderJob(job);
  loadDeliveries(ctx);
  try {
    const { data } = await api(`/v1/jobs/${encodeURIComponent(id)}/events`, { signal: ctx.ctrl.signal });
    if (jobCtx !== ctx) return;
    addJobEvents(ctx, Array.isArray(data) ? data : []);
  } catch (e) {
    if (jobCtx !== ctx) return;
    report(e, 'Loading the timeline');
  }
  if (ctx.terminal) {
    setJobLive('Finished: no more events.', 'done');
    // The job may have ended between the two reads.
    if (!TERMINAL.has(job.status)) refreshJob(ctx);
    return;
  }
  const stream = new LiveStream({
    url: `/v1/jobs/${encodeURIComponent(id)}/stream`,
    lastEventId: ctx.lastId,
    onEvent: (raw) => {
      if (jobCtx !== ctx) return;
      const ev = parseEvent(raw);
      if (!ev) return;
      addJobEvents(ctx, [ev]);
      refreshJob(ctx);
      if (TERMINAL_EVENTS.has(ev.event)) loadDeliveries(ctx);
    },
    onEnd: () => !ctx.terminal, // the server closes the stream after the terminal event
    onState: (state, info) => {
      if (jobCtx !== ctx) return;
      if (state === 'open') setJobLive('Following live events.', 'open');
      else if (state === 'connecting') setJobLive('Connecting to live events…', 'connecting');
      else if (state === 'reconnecting') setJobLive(`Live events interrupted: reconnecting in ${Math.ceil(info.delay / 1000)} s…`, 'reconnecting');
      else if (state === 'closed') {
        setJobLive('Finished: no more events.', 'done');
        refreshJob(ctx);
      } else if (state === 'error') {
        setJobLive(`Live events unavailable: ${info ? info.message : 'error'}`, 'error');
        report(info, 'Following the job');
      }
    },
  });
  ctx.stream = stream;
  stream.start();
}

// ---------------------------------------------------------------------------------------- cancel

function openCancelDialog() {
  if (!jobCtx || !jobCtx.job) return;
  $('cancel-dialog-job').textContent = String(jobCtx.job.job_id);
  const dlg = $('cancel-dialog');
  if (!dlg.open) dlg.showModal();
  $('cancel-dismiss').focus();
}

async function confirmCancel() {
  const dlg = $('cancel-dialog');
  dlg.close('confirm');
  const ctx = jobCtx;
  if (!ctx) return;
  const btn = $('cancel-button');
  btn.disabled = true;
  setJobLive('Cancelling…', 'canceling');
  try {
    const { status, data } = await api(`/v1/jobs/${encodeURIComponent(ctx.id)}/cancel`, { method: 'POST', signal: ctx.ctrl.signal });
    if (jobCtx !== ctx) return;
    if (data) renderJob(data);
    setJobLive(status === 202 ? 'Cancel requested: the job is still stopping.' : `Cancel answered: ${data ? data.status : status}.`, 'canceled');
  } catch (e) {
    if (jobCtx !== ctx) return;
    if (e instanceof ApiError && e.status === 409) {
      setJobLive('The job had already finished.', 'conflict');
    } else {
      report(e, 'Cancelling the job');
      setJobLive('Cancel failed.', 'error');
    }
  } finally {
    if (jobCtx === ctx) refreshJob(ctx);
  }
}

// ---------------------------------------------------------------------------------------- router

let firstRoute = true;

function route() {
  const hash = location.hash || '#/';
  const m = /^#\/jobs\/([^/?#]+)\/?$/.exec(hash);
  const dlg = $('cancel-dialog');
  if (dlg.open) dlg.close('navigate');
  if (m) {
    let id;
    try {
      id = decodeURIComponent(m[1]);
    } catch {
      id = m[1];
    }
    $('list-view').hidden = true;
    $('job-view').hidden = false;
    document.title = `Job ${id} · automation-gateway`;
    showJob(id);
    if (!firstRoute) $('job-title').focus();
  } else {
    stopJob();
    $('job-view').hidden = true;
    $('list-view').hidden = false;
    document.title = 'Jobs · automation-gateway';
    if (list.needsLoad) loadList();
    if (!firstRoute) $('list-title').focus();
  }
  firstRoute = false;
}

// ------------------------------------------------------------------------------------- start-up

async function loadActions() {
  try {
    const { data } = await api('/v1/actions');
    const names = (data && Array.isArray(data.actions) ? data.actions : []).map((a) => String(a.name)).sort();
    const sel = $('filter-action');
    const keep = sel.value;
    sel.replaceChildren(el('option', { value: '', text: 'Any action' }), ...names.map((n) => el('option', { value: n, text: n })));
    if (names.includes(keep)) sel.value = keep;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      $('filter-action').replaceChildren(el('option', { value: '', text: 'Any action' }));
    }
    report(e, 'Loading the actions');
  }
}

/** Everything that depends on the token: (re)load it all. */
function reloadAll() {
  loadActions();
  loadStats();
  if (!$('list-view').hidden) loadList();
  else {
    list.gen += 1; // drop answers still in flight
    list.needsLoad = true;
  }
  if (!live.paused) startLive();
  if (jobCtx) showJob(jobCtx.id);
}

function init() {
  const tokenInput = $('token-input');
  tokenInput.value = getToken();

  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken(tokenInput.value.trim());
    clearAlert();
    reloadAll();
  });
  $('token-clear').addEventListener('click', () => {
    tokenInput.value = '';
    setToken('');
    clearAlert();
    reloadAll();
  });

  $('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    loadList();
  });
  $('filter-status').addEventListener('change', () => loadList());
  $('filter-action').addEventListener('change', () => loadList());
  $('filter-target').addEventListener('change', () => loadList());
  $('filter-requested-by').addEventListener('change', () => loadList());
  $('filter-reset').addEventListener('click', () => {
    $('filters').reset();
    loadList();
  });
  $('load-more').addEventListener('click', () => loadMore());
  $('live-toggle').addEventListener('click', () => (live.paused ? resumeLive() : pauseLive()));

  $('cancel-button').addEventListener('click', () => openCancelDialog());
  $('cancel-dismiss').addEventListener('click', () => $('cancel-dialog').close('dismiss'));
  $('cancel-confirm').addEventListener('click', () => confirmCancel());
  $('cancel-dialog').addEventListener('close', () => {
    if (!$('job-view').hidden && !$('cancel-button').hidden) $('cancel-button').focus();
  });

  window.addEventListener('hashchange', route);
  route();
  loadActions();
  loadStats();
  stats.timer = setInterval(loadStats, STATS_EVERY_MS);
  startLive();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
