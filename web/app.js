// Fulfillment AI operations dashboard.
//
// Plain ES2020, no dependencies, no build step. Data comes from the REST API and two WebSockets
// (/ws/kpi, /ws/deviations). Nothing polls on a timer: the sockets push KPI deltas, deviations
// and agent actions, and their heartbeats are the page's only clock (health refresh, pending
// agent runs, relative times).
'use strict';

(function () {
  // ------------------------------------------------------------------------------------------
  // Small helpers
  // ------------------------------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  /** Builds an element: h('div', {class: 'x', text: 'y', onclick: f}, ...children). */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    setProps(node, props);
    appendAll(node, children);
    return node;
  }
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, props, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setProps(node, props);
    appendAll(node, children);
    return node;
  }
  function setProps(node, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') node.setAttribute('class', v);
      else if (k === 'text') node.textContent = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k === 'testid') node.setAttribute('data-testid', v);
      else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
      else if (k === 'value') node.value = v;
      else node.setAttribute(k, v === true ? '' : v);
    }
  }
  function appendAll(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
  }
  const enc = encodeURIComponent;
  const pad2 = (n) => String(n).padStart(2, '0');
  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

  /** Event time (UTC, the data's own clock). */
  function fmtEvent(ms, seconds) {
    if (!isNum(ms)) return '—';
    const d = new Date(ms);
    const base = `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`;
    return seconds ? `${base}:${pad2(d.getUTCSeconds())}` : base;
  }
  function fmtDay(ms) {
    if (!isNum(ms)) return '—';
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())}`;
  }
  /** Wall-clock time (local). */
  function fmtWall(ms) {
    if (!isNum(ms)) return '—';
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  function fmtDur(ms) {
    if (!isNum(ms)) return '—';
    const a = Math.abs(ms);
    const sign = ms < 0 ? '−' : '';
    if (a < 1000) return `${sign}${Math.round(a)} ms`;
    if (a < 60e3) return `${sign}${(a / 1e3).toFixed(1)} s`;
    if (a < 3600e3) return `${sign}${Math.floor(a / 60e3)} min`;
    if (a < 86400e3) return `${sign}${Math.floor(a / 3600e3)} h ${Math.floor((a % 3600e3) / 60e3)} min`;
    if (a < 365 * 86400e3) return `${sign}${Math.floor(a / 86400e3)} d ${Math.floor((a % 86400e3) / 3600e3)} h`;
    return `${sign}${(a / (365.25 * 86400e3)).toFixed(1)} y`;
  }
  function fmtAgo(ms) {
    if (!isNum(ms)) return '—';
    const d = Date.now() - ms;
    if (d < 5e3) return 'just now';
    if (d < 60e3) return `${Math.round(d / 1e3)} s ago`;
    if (d < 3600e3) return `${Math.round(d / 60e3)} min ago`;
    if (d < 86400e3) return `${Math.round(d / 3600e3)} h ago`;
    return fmtWall(ms);
  }
  const nf0 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const nf2 = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });
  const money = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
  function fmtCompact(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return `${(v / 1e6).toFixed(a >= 1e7 ? 1 : 2)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(a >= 1e5 ? 0 : 1)}k`;
    return nf0.format(v);
  }
  function fmtNumber(v) {
    if (!isNum(v)) return v == null ? '—' : String(v);
    if (Number.isInteger(v)) return nf0.format(v);
    return Math.abs(v) >= 100 ? nf0.format(v) : nf2.format(v);
  }
  function humanize(s) {
    return String(s || '').replace(/_/g, ' ');
  }
  function newestBy(list, ...keys) {
    let best = null;
    for (const x of list) {
      if (!best) { best = x; continue; }
      for (const k of keys) {
        const a = x[k] ?? -Infinity;
        const b = best[k] ?? -Infinity;
        if (a > b) { best = x; break; }
        if (a < b) break;
      }
    }
    return best;
  }

  // ------------------------------------------------------------------------------------------
  // API access (with the optional ?token=KEY of the page URL)
  // ------------------------------------------------------------------------------------------
  const TOKEN = new URLSearchParams(location.search).get('token');

  class ApiError extends Error {
    constructor(message, status, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  async function api(path, opts = {}) {
    const headers = { Accept: 'application/json' };
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    let body;
    if (opts.body !== undefined) {
      body = JSON.stringify(opts.body);
      headers['Content-Type'] = 'application/json';
    }
    let res;
    try {
      res = await fetch(path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
    } catch (e) {
      throw new ApiError('server unreachable', 0, null);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = text; }
    }
    if (!res.ok) {
      let msg = `${res.status} ${res.statusText}`;
      if (data && typeof data === 'object') msg = data.detail || data.title || msg;
      else if (typeof data === 'string' && data.length < 300) msg = data || msg;
      throw new ApiError(msg, res.status, data);
    }
    return data;
  }
  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v == null || v === '') continue;
      q.set(k, Array.isArray(v) ? v.join(',') : String(v));
    }
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ------------------------------------------------------------------------------------------
  // Toasts and tooltip
  // ------------------------------------------------------------------------------------------
  function toast(message, kind = '') {
    const t = h('div', { class: `toast ${kind}`, role: kind === 'err' ? 'alert' : 'status', text: message });
    $('#toasts').append(t);
    setTimeout(() => t.remove(), kind === 'err' ? 7000 : 4000);
  }

  const tipEl = $('#tooltip');
  function showTip(evt, content) {
    tipEl.replaceChildren(content);
    tipEl.hidden = false;
    moveTip(evt);
  }
  function moveTip(evt) {
    if (tipEl.hidden) return;
    const pad = 14;
    const r = tipEl.getBoundingClientRect();
    let x = evt.clientX + pad;
    let y = evt.clientY + pad;
    if (x + r.width > window.innerWidth - 8) x = evt.clientX - r.width - pad;
    if (y + r.height > window.innerHeight - 8) y = evt.clientY - r.height - pad;
    tipEl.style.left = `${Math.max(4, x)}px`;
    tipEl.style.top = `${Math.max(4, y)}px`;
  }
  function hideTip() { tipEl.hidden = true; }
  /** Shows `make()` (a Node) as a tooltip while the pointer is over `node`. */
  function withTip(node, make) {
    node.addEventListener('mouseenter', (e) => showTip(e, make(e)));
    node.addEventListener('mousemove', moveTip);
    node.addEventListener('mouseleave', hideTip);
  }
  function kvList(pairs) {
    const dl = h('dl', { class: 'kv' });
    for (const [k, v] of pairs) dl.append(h('dt', { text: k }), h('dd', { text: v, title: v }));
    return dl;
  }

  // ------------------------------------------------------------------------------------------
  // Domain vocabulary
  // ------------------------------------------------------------------------------------------
  const KPIS = [
    ['on_time_rate', 'On-time rate', 'ratio', 'up'],
    ['on_time_rate_7d', 'On-time rate · 7 d', 'ratio', 'up'],
    ['otif_rate', 'OTIF rate', 'ratio', 'up'],
    ['late_deliveries', 'Late deliveries', 'count', 'down'],
    ['avg_delivery_delay_hours', 'Avg delivery delay', 'hours', 'down'],
    ['p95_delivery_delay_hours', 'P95 delivery delay', 'hours', 'down'],
    ['order_to_ship_hours', 'Order → ship', 'hours', 'down'],
    ['order_to_delivery_hours', 'Order → delivery', 'hours', 'down'],
    ['fulfillment_gaps', 'Fulfilment gaps', 'count', 'down'],
    ['open_backlog', 'Open backlog', 'count', 'down'],
    ['carrier_exceptions', 'Carrier exceptions', 'count', 'down'],
    ['payment_failure_rate', 'Payment failures', 'ratio', 'down'],
    ['refund_rate', 'Refund rate', 'ratio', 'down'],
    ['ticket_rate', 'Ticket rate', 'ratio', 'down'],
    ['segment_risk_score', 'Open-order delay risk', 'ratio', 'down'],
    ['order_value', 'Order value', 'currency', 'up'],
  ].map(([name, label, unit, better]) => ({ name, label, unit, better }));
  const KPI_BY_NAME = new Map(KPIS.map((k) => [k.name, k]));

  const DEV_LABEL = {
    sla_ship_breach: 'Ship SLA breach',
    sla_delivery_breach: 'Delivery SLA breach',
    fulfillment_gap: 'Fulfilment gap',
    payment_failed: 'Payment failed',
    carrier_exception: 'Carrier exception',
    partial_delivery: 'Partial delivery',
    refund_requested: 'Refund requested',
    ticket_raised: 'Ticket raised',
    predicted_delay: 'Predicted delay',
    kpi_threshold_breach: 'KPI threshold breach',
    kpi_anomaly: 'KPI anomaly',
  };
  const devLabel = (t) => DEV_LABEL[t] || humanize(t);
  const SHIP_ORDER = ['Same Day', 'First Class', 'Second Class', 'Standard Class'];
  const EVENT_TONE = {
    order_created: 't-info', payment_authorized: 't-ok', payment_failed: 't-crit', shipped: 't-info',
    carrier_checkpoint: 't-muted', carrier_exception: 't-crit', out_for_delivery: 't-info', delivered: 't-ok',
    delivery_failed: 't-crit', refund_requested: 't-warn', return_requested: 't-warn', ticket_raised: 't-warn',
    cancelled: 't-crit',
  };

  /** A KPI value split into number and unit text. */
  function kpiParts(kpi, v) {
    if (!isNum(v)) return ['—', ''];
    const unit = (KPI_BY_NAME.get(kpi) || {}).unit || 'number';
    switch (unit) {
      case 'ratio': return [(v * 100).toFixed(Math.abs(v) >= 0.9995 || v === 0 ? 0 : 1), '%'];
      case 'hours': return [Math.abs(v) < 10 ? v.toFixed(1) : nf0.format(v), 'h'];
      case 'count': return [nf0.format(v), ''];
      case 'currency': return [`$${fmtCompact(v)}`, ''];
      default: return [fmtNumber(v), ''];
    }
  }
  const kpiText = (kpi, v) => kpiParts(kpi, v).join('');
  /** The change between two values of one KPI, as text. */
  function kpiDeltaText(kpi, d, prev) {
    const unit = (KPI_BY_NAME.get(kpi) || {}).unit;
    const arrow = d > 0 ? '▲' : d < 0 ? '▼' : '■';
    const a = Math.abs(d);
    switch (unit) {
      case 'ratio': return `${arrow} ${(a * 100).toFixed(1)} pt`;
      case 'hours': return `${arrow} ${a < 10 ? a.toFixed(1) : nf0.format(a)} h`;
      case 'count': return `${arrow} ${nf0.format(a)}`;
      case 'currency': return isNum(prev) && prev !== 0 ? `${arrow} ${((a / Math.abs(prev)) * 100).toFixed(0)}%` : `${arrow} $${fmtCompact(a)}`;
      default: return `${arrow} ${fmtNumber(a)}`;
    }
  }

  // ------------------------------------------------------------------------------------------
  // State
  // ------------------------------------------------------------------------------------------
  const state = {
    thresholds: {},
    thresholdsVersion: null,
    series: new Map(), // "kpi|dims" -> {kpi, dims, dimsKey, windows: Map(window_start -> record)}
    kpiUpdates: 0,
    devs: new Map(), // id -> deviation (the newest MAX_DEVS)
    devOrder: [], // ids, newest first
    devSeen: new Set(),
    devCounts: { all: 0, critical: 0, warning: 0, info: 0 },
    devTypes: new Set(),
    typeCounts: new Map(), // type -> {n, critical, warning, info}
    devArrivals: [], // wall ms of live arrivals (rate)
    sevFilter: 'all',
    typeFilter: '',
    actions: [], // newest first
    toolCounts: new Map(),
    actionsTotal: 0,
    cases: [],
    casesLoaded: false,
    caseFilter: '',
    health: null,
    healthError: null,
    heartbeat: null, // {wall, watermark, at}
    prevHeartbeat: null,
    view: 'overview',
  };
  const MAX_DEVS = 400;
  const SHOWN_DEVS = 150;
  const MAX_ACTIONS = 200;

  const dimsKey = (dims) => Object.keys(dims || {}).sort().map((k) => `${k}=${dims[k]}`).join(',');
  const isHeatSeries = (s) => s.kpi === 'on_time_rate' && s.dimNames === 'region,ship_mode';

  /** Merges one KPI record (newest version per window wins). */
  function ingestKpi(rec) {
    if (!rec || !rec.kpi || !isNum(rec.window_start)) return;
    const dk = dimsKey(rec.dims);
    const key = `${rec.kpi}|${dk}`;
    let s = state.series.get(key);
    if (!s) {
      s = { kpi: rec.kpi, dims: rec.dims || {}, dimsKey: dk, dimNames: Object.keys(rec.dims || {}).sort().join(','), windows: new Map() };
      state.series.set(key, s);
    }
    const prev = s.windows.get(rec.window_start);
    if (prev && (prev.version || 0) > (rec.version || 0)) return;
    s.windows.set(rec.window_start, rec);
    if (s.windows.size > 400) {
      const keys = Array.from(s.windows.keys()).sort((a, b) => a - b);
      for (const k of keys.slice(0, keys.length - 240)) s.windows.delete(k);
    }
    if (dk === '') dirtyCards.add(rec.kpi);
    if (isHeatSeries(s)) invalidate('heatmap');
    else if (dk === '') invalidate('cards');
  }
  const dirtyCards = new Set();

  function windowsOf(kpi, dk = '') {
    const s = state.series.get(`${kpi}|${dk}`);
    if (!s) return [];
    return Array.from(s.windows.values()).sort((a, b) => a.window_start - b.window_start);
  }

  // ------------------------------------------------------------------------------------------
  // Render scheduling: data marks parts dirty, one flush renders them (at most ~8 per second).
  // ------------------------------------------------------------------------------------------
  const dirty = new Set();
  let flushTimer = null;
  function invalidate(...parts) {
    for (const p of parts) dirty.add(p);
    if (flushTimer == null) flushTimer = setTimeout(flush, 120);
  }
  function flush() {
    flushTimer = null;
    const d = new Set(dirty);
    dirty.clear();
    if (d.has('cards')) renderCards();
    if (d.has('heatmap')) renderHeatmap();
    if (d.has('devs')) renderDeviations();
    if (d.has('actions')) renderActions();
    if (d.has('cases')) renderCases();
    if (d.has('health')) renderHealth();
    if (d.has('clock')) renderClock();
  }

  // ------------------------------------------------------------------------------------------
  // WebSockets with reconnect, backoff and a heartbeat watchdog
  // ------------------------------------------------------------------------------------------
  class LiveSocket {
    constructor(name, path, params, onMessage, onOpen) {
      this.name = name;
      this.onOpen = onOpen;
      this.opens = 0;
      this.path = path;
      this.params = params;
      this.onMessage = onMessage;
      this.state = 'connecting';
      this.attempt = 0;
      this.ws = null;
      this.watchdog = null;
      this.retry = null;
    }
    url() {
      const u = new URL(this.path + query(this.params), location.href);
      u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
      if (TOKEN) u.searchParams.set('token', TOKEN);
      return u.toString();
    }
    connect() {
      this.retry = null;
      this.setState('connecting');
      let ws;
      try {
        ws = new WebSocket(this.url());
      } catch (e) {
        this.scheduleReconnect();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.attempt = 0;
        this.opens += 1;
        this.setState('open');
        this.feedWatchdog();
        if (this.onOpen) this.onOpen(this.opens);
      };
      ws.onmessage = (ev) => {
        this.feedWatchdog();
        lastLiveAt = Date.now();
        let msg;
        try { msg = JSON.parse(ev.data); } catch (e) { return; }
        this.onMessage(msg, this);
      };
      ws.onerror = () => { /* onclose follows */ };
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        clearTimeout(this.watchdog);
        this.closeCode = ev.code;
        this.scheduleReconnect();
        onSocketDown();
      };
    }
    /** No message for three heartbeats: the connection is dead even if TCP has not noticed. */
    feedWatchdog() {
      clearTimeout(this.watchdog);
      this.watchdog = setTimeout(() => {
        if (this.ws) this.ws.close();
      }, 20000);
    }
    scheduleReconnect() {
      this.attempt += 1;
      if (this.opens === 0 && this.attempt === 1) probeAuth(this.path);
      const base = Math.min(30000, 500 * 2 ** Math.min(this.attempt - 1, 6));
      const delay = Math.round(base * (0.75 + Math.random() * 0.5));
      this.setState(this.attempt > 2 ? 'offline' : 'connecting');
      this.retryAt = Date.now() + delay;
      if (!this.retry) this.retry = setTimeout(() => this.connect(), delay);
    }
    send(obj) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
    }
    setState(s) {
      this.state = s;
      renderConnection();
    }
  }

  const kpiSocket = new LiveSocket('kpi', '/ws/kpi', {
    kpi: KPIS.map((k) => k.name),
    dims: ['global', 'region+ship_mode'],
  }, onKpiMessage, (opens) => {
    // A reconnect may reach a restarted job (versions start again): read everything afresh.
    if (opens > 1) {
      state.series.clear();
      heatKey = '';
      for (const k of KPIS) dirtyCards.add(k.name);
      invalidate('cards', 'heatmap');
      loadKpiHistory();
    }
    loadHealth();
  });
  const devSocket = new LiveSocket('deviations', '/ws/deviations', {}, onDevMessage, (opens) => {
    if (opens > 1) scheduleCasesRefresh();
  });
  /** A socket never opened: a 401 over plain HTTP means the server wants an API key. */
  let authProblem = null;
  async function probeAuth(path) {
    try {
      const headers = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
      const res = await fetch(path, { headers, cache: 'no-store' });
      if (res.status === 401) {
        authProblem = TOKEN
          ? 'The server rejected the API key in the page address (?token=…).'
          : 'This server requires an API key: open the dashboard as /?token=YOUR_KEY.';
        renderConnection();
      }
    } catch (e) { /* the server is down; the reconnect loop reports it */ }
  }
  /** A socket closed: the heartbeats stop, so check the server's health now. */
  function onSocketDown() {
    loadHealth();
  }

  function onKpiMessage(msg) {
    if (msg.type === 'snapshot' || msg.type === 'kpis') {
      for (const r of msg.kpis || []) ingestKpi(r);
      if (msg.type === 'kpis') {
        state.kpiUpdates += 1;
        $('#kpi-updates').textContent = nf0.format(state.kpiUpdates);
      }
    } else if (msg.type === 'heartbeat') {
      onHeartbeat(msg);
    }
  }
  function onDevMessage(msg) {
    if (msg.type === 'snapshot') {
      const list = (msg.deviations || []).slice().reverse(); // oldest first, so newest ends on top
      for (const d of list) addDeviation(d, null);
      invalidate('devs');
    } else if (msg.type === 'deviations') {
      const list = msg.deviations || [];
      const quiet = state.devArrivals.filter((t) => Date.now() - t < 10000).length < 10;
      for (const d of list) addDeviation(d, quiet && list.length <= 3);
      invalidate('devs');
    } else if (msg.type === 'actions') {
      onActions(msg.actions || []);
    } else if (msg.type === 'heartbeat') {
      onHeartbeat(msg);
    }
  }

  let lastLiveAt = null;
  function renderConnection() {
    const socks = [kpiSocket, devSocket];
    const open = socks.filter((s) => s.state === 'open').length;
    let st;
    let txt;
    if (open === socks.length) { st = 'live'; txt = 'Live'; }
    else if (open > 0) { st = 'partial'; txt = 'Partly live'; }
    else if (socks.some((s) => s.state === 'offline')) { st = 'offline'; txt = 'Offline · retrying'; }
    else { st = 'connecting'; txt = socks.some((s) => s.attempt > 0) ? 'Reconnecting' : 'Connecting'; }
    const node = $('#ws-state');
    node.dataset.state = st;
    $('.txt', node).textContent = txt;
    node.title = socks.map((s) => `/ws/${s.name}: ${s.state}${s.closeCode ? ` (last close ${s.closeCode})` : ''}`).join('\n');
    const banner = $('#offline-banner');
    const wasLive = socks.some((s) => s.opens > 0);
    if (open > 0) authProblem = null;
    banner.hidden = !(authProblem || (wasLive && open === 0));
    if (authProblem) banner.textContent = authProblem;
    else if (!banner.hidden) {
      banner.textContent = `Live updates paused: reconnecting to the server. Figures are as of ${fmtWall(lastLiveAt)}.`;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Heartbeats: the only clock
  // ------------------------------------------------------------------------------------------
  let lastHealthAt = 0;
  let healthInFlight = false;
  function onHeartbeat(msg) {
    const now = Date.now();
    const hb = state.heartbeat;
    if (!hb || now - hb.at > 1500) {
      state.prevHeartbeat = hb;
      state.heartbeat = { wall: msg.wall, watermark: msg.watermark, at: now };
    } else {
      // The other socket's heartbeat of the same tick: refresh the numbers only.
      state.heartbeat = { ...hb, wall: msg.wall ?? hb.wall, watermark: Math.max(msg.watermark ?? 0, hb.watermark ?? 0) };
      invalidate('clock');
      return;
    }
    invalidate('clock', 'actions', 'cases');
    if (now - lastHealthAt > 4000) loadHealth();
    refreshPendingCases();
  }
  function renderClock() {
    const hb = state.heartbeat;
    if (!hb) return;
    $('#watermark').textContent = fmtEvent(hb.watermark);
    $('#watermark').title = `watermark ${fmtEvent(hb.watermark, true)} UTC · heartbeat ${fmtWall(hb.wall)}`;
    $('#lag').textContent = isNum(hb.wall) && isNum(hb.watermark) ? fmtDur(hb.wall - hb.watermark) : '—';
    const tag = $('#mode-tag');
    const prev = state.prevHeartbeat;
    if (prev && isNum(prev.watermark) && isNum(hb.watermark) && hb.wall > prev.wall) {
      const speed = (hb.watermark - prev.watermark) / (hb.wall - prev.wall);
      tag.hidden = false;
      if (speed >= 2) {
        tag.textContent = `×${fmtCompact(speed)}`;
        tag.className = 'tag replay';
        tag.title = `event time runs ${fmtCompact(speed)} times faster than the wall clock (replay or generator pace)`;
      } else if (speed > 0) {
        tag.textContent = 'LIVE';
        tag.className = 'tag live';
        tag.title = 'event time follows the wall clock';
      } else {
        tag.textContent = 'IDLE';
        tag.className = 'tag';
        tag.title = 'the watermark did not move since the last heartbeat';
      }
    }
    state.devArrivals = state.devArrivals.filter((t) => Date.now() - t < 60000);
    $('#alerts-rate').textContent = `${nf0.format(state.devArrivals.length)} in the last minute`;
  }

  async function loadHealth() {
    if (healthInFlight) return;
    healthInFlight = true;
    lastHealthAt = Date.now();
    try {
      state.health = await api('/health');
      state.healthError = null;
    } catch (e) {
      state.healthError = e.message;
    } finally {
      healthInFlight = false;
      invalidate('health');
    }
  }

  // ------------------------------------------------------------------------------------------
  // KPI cards
  // ------------------------------------------------------------------------------------------
  const cardEls = new Map();
  function buildCards() {
    const grid = $('#kpi-grid');
    for (const k of KPIS) {
      const value = h('span', { class: 'kpi-value', testid: 'kpi-value', text: '—' });
      const unit = h('span', { class: 'kpi-unit' });
      const delta = h('span', { class: 'kpi-delta' });
      const status = h('span', { class: 'kpi-status' });
      const spark = svg('svg', { class: 'spark', viewBox: '0 0 100 34', preserveAspectRatio: 'none' });
      const footL = h('span');
      const footR = h('span');
      const card = h('div', { class: 'kpi-card', testid: 'kpi-card', dataset: { kpi: k.name } },
        h('div', { class: 'kpi-head' }, h('span', { class: 'kpi-name', text: k.label, title: k.name }), status),
        h('div', { class: 'kpi-main' }, h('span', null, value, unit), delta),
        spark,
        h('div', { class: 'kpi-foot' }, footL, footR));
      const points = [];
      withTip(spark, () => sparkTip(k.name, points, spark, null));
      spark.addEventListener('mousemove', (e) => { showTip(e, sparkTip(k.name, points, spark, e)); });
      cardEls.set(k.name, { card, value, unit, delta, status, spark, footL, footR, points });
      grid.append(card);
    }
  }
  function sparkTip(kpi, points, node, e) {
    if (!points.length) return h('div', { class: 'muted', text: 'no windows yet' });
    let i = points.length - 1;
    if (e) {
      const r = node.getBoundingClientRect();
      i = Math.round(((e.clientX - r.left) / Math.max(1, r.width)) * (points.length - 1));
      i = Math.max(0, Math.min(points.length - 1, i));
    }
    const p = points[i];
    return h('div', null,
      h('div', { class: 'tt-title', text: `${kpiText(kpi, p.value)} · ${fmtDay(p.window_start)}` }),
      kvList([
        ['window', `${fmtEvent(p.window_start)} → ${fmtEvent(p.window_end)}`],
        ['count', `${fmtNumber(p.numerator)} / ${fmtNumber(p.denominator)}`],
        ['status', p.status || '—'],
        ['version', `${p.version ?? '—'}${p.final ? ' (final)' : ' (open)'}`],
      ]));
  }

  function renderCards() {
    for (const kpi of dirtyCards) {
      const c = cardEls.get(kpi);
      if (!c) continue;
      const wins = windowsOf(kpi).slice(-30);
      c.points.length = 0;
      c.points.push(...wins);
      const last = wins[wins.length - 1];
      if (!last) continue;
      const [num, unit] = kpiParts(kpi, last.value);
      c.value.textContent = num;
      c.unit.textContent = unit;
      const st = last.status || 'unrated';
      c.card.classList.remove('st-ok', 'st-warn', 'st-critical', 'st-unrated');
      c.card.classList.add(`st-${st}`);
      c.status.textContent = st === 'unrated' ? '' : st;
      c.status.title = st === 'unrated' ? 'too few events in the window to rate' : `status ${st}`;
      // Delta against the previous window with a value.
      let prev = null;
      for (let i = wins.length - 2; i >= 0; i--) if (isNum(wins[i].value)) { prev = wins[i]; break; }
      if (prev && isNum(last.value)) {
        const d = last.value - prev.value;
        const meta = KPI_BY_NAME.get(kpi);
        const th = state.thresholds[kpi];
        const better = th ? (th.direction === 'below' ? 'up' : 'down') : meta.better;
        const good = d === 0 ? null : (d > 0) === (better === 'up');
        c.delta.textContent = kpiDeltaText(kpi, d, prev.value);
        c.delta.className = `kpi-delta ${good == null ? '' : good ? 'good' : 'bad'}`;
        c.delta.title = `vs window of ${fmtDay(prev.window_start)}: ${kpiText(kpi, prev.value)}`;
      } else {
        c.delta.textContent = '';
      }
      c.footL.textContent = `${fmtDay(last.window_start)} · ${last.final ? 'final' : 'open'}`;
      c.footL.title = `event-time window ${fmtEvent(last.window_start)} → ${fmtEvent(last.window_end)} UTC`;
      c.footR.textContent = isNum(last.denominator) ? `n ${fmtCompact(last.denominator)}` : '';
      drawSpark(c.spark, wins.map((w) => w.value), state.thresholds[kpi]);
    }
    dirtyCards.clear();
  }

  /** A sparkline into an SVG with viewBox 0 0 100 H (stretched to the card's width). */
  function drawSpark(node, values, th) {
    const W = 100;
    const H = 34;
    const pad = 3;
    const nums = values.filter(isNum);
    node.replaceChildren();
    if (!nums.length) return;
    let lo = Math.min(...nums);
    let hi = Math.max(...nums);
    const span0 = hi - lo || Math.abs(hi) * 0.1 || 1;
    const lines = [];
    if (th) {
      for (const [v, cls] of [[th.warn, 'warn'], [th.critical, 'crit']]) {
        if (isNum(v) && v >= lo - span0 * 0.6 && v <= hi + span0 * 0.6) {
          lines.push([v, cls]);
          lo = Math.min(lo, v);
          hi = Math.max(hi, v);
        }
      }
    }
    if (hi - lo < 1e-12) { lo -= span0 / 2; hi += span0 / 2; }
    const n = values.length;
    const x = (i) => (n === 1 ? W : (i / (n - 1)) * W);
    const y = (v) => pad + (1 - (v - lo) / (hi - lo)) * (H - 2 * pad);
    let d = '';
    let area = '';
    let firstX = null;
    let lastX = null;
    let pen = false;
    values.forEach((v, i) => {
      if (!isNum(v)) { pen = false; return; }
      const px = x(i).toFixed(2);
      const py = y(v).toFixed(2);
      d += `${pen ? 'L' : 'M'}${px},${py}`;
      area += `${firstX == null ? 'M' : 'L'}${px},${py}`;
      if (firstX == null) firstX = px;
      lastX = px;
      pen = true;
    });
    if (n === 1) d = `M0,${y(nums[0]).toFixed(2)}L${W},${y(nums[0]).toFixed(2)}`;
    for (const [v, cls] of lines) {
      node.append(svg('line', { class: `thr ${cls}`, x1: 0, x2: W, y1: y(v).toFixed(2), y2: y(v).toFixed(2) }));
    }
    if (n > 1) node.append(svg('path', { class: 'area', d: `${area}L${lastX},${H}L${firstX},${H}Z` }));
    node.append(svg('path', { class: 'line', d }));
  }

  async function loadKpiHistory() {
    await Promise.all(KPIS.map(async (k) => {
      try {
        const r = await api(`/kpis/history${query({ kpi: k.name })}`);
        // Points may leave out the series' name and dimensions (the answer carries them).
        for (const p of (r && r.points) || []) ingestKpi({ kpi: r.kpi || k.name, dims: r.dims || {}, ...p });
      } catch (e) {
        // The live snapshot still fills the card.
      }
    }));
    try {
      const r = await api(`/kpis${query({ kpi: 'on_time_rate', dims: 'region+ship_mode', window: 'latest' })}`);
      for (const rec of (r && r.items) || []) ingestKpi(rec);
    } catch (e) { /* the socket fills it */ }
  }

  // ------------------------------------------------------------------------------------------
  // Heatmap: on-time rate by region x ship mode, latest window per cell
  // ------------------------------------------------------------------------------------------
  let heatKey = '';
  const heatCells = new Map();
  const RAMP = [
    [0.0, [178, 58, 52]],
    [0.55, [214, 120, 58]],
    [0.75, [215, 180, 60]],
    [1.0, [63, 178, 127]],
  ];
  function heatColor(v) {
    const th = state.thresholds.on_time_rate || { warn: 0.9, critical: 0.8 };
    // Map the value so that critical sits at 0.55 and warn at 0.75 of the ramp.
    const crit = isNum(th.critical) ? th.critical : 0.8;
    const warn = isNum(th.warn) && th.warn > crit ? th.warn : crit + 0.1;
    const floor = Math.max(0, crit - 0.25);
    let t;
    if (v <= floor) t = 0;
    else if (v <= crit) t = ((v - floor) / (crit - floor)) * 0.55;
    else if (v <= warn) t = 0.55 + ((v - crit) / (warn - crit)) * 0.2;
    else t = 0.75 + Math.min(1, (v - warn) / Math.max(1e-9, 1 - warn)) * 0.25;
    for (let i = 1; i < RAMP.length; i++) {
      if (t <= RAMP[i][0]) {
        const [t0, c0] = RAMP[i - 1];
        const [t1, c1] = RAMP[i];
        const f = (t - t0) / (t1 - t0);
        const c = c0.map((a, j) => Math.round(a + (c1[j] - a) * f));
        return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
      }
    }
    return 'rgb(63, 178, 127)';
  }
  function renderLegend() {
    const stops = [0.55, 0.7, 0.8, 0.85, 0.9, 0.95, 1].map((v, i, a) => `${heatColor(v)} ${((i / (a.length - 1)) * 100).toFixed(0)}%`);
    $('#heat-legend').replaceChildren(
      h('span', { text: '≤55%' }),
      h('span', { class: 'ramp', style: `background: linear-gradient(90deg, ${stops.join(', ')})` }),
      h('span', { text: '100%' }),
      h('span', { class: 'hatch' }),
      h('span', { text: 'too few deliveries to rate' }));
  }
  function renderHeatmap() {
    const latest = new Map(); // "region|mode" -> record
    const regions = new Set();
    const modes = new Set();
    for (const s of state.series.values()) {
      if (!isHeatSeries(s)) continue;
      let best = null;
      for (const r of s.windows.values()) if (!best || r.window_start > best.window_start) best = r;
      if (!best) continue;
      regions.add(s.dims.region);
      modes.add(s.dims.ship_mode);
      latest.set(`${s.dims.region}|${s.dims.ship_mode}`, best);
    }
    const regionList = Array.from(regions).sort();
    const modeList = Array.from(modes).sort((a, b) => {
      const ia = SHIP_ORDER.indexOf(a);
      const ib = SHIP_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    const grid = $('#heatmap');
    const key = `${regionList.join(',')}/${modeList.join(',')}`;
    if (!regionList.length) {
      grid.replaceChildren(h('div', { class: 'empty', text: 'Waiting for on-time rates by region and ship mode…' }));
      heatKey = '';
      return;
    }
    if (key !== heatKey) {
      heatKey = key;
      heatCells.clear();
      grid.style.gridTemplateColumns = `minmax(56px, auto) repeat(${modeList.length}, minmax(0, 1fr))`;
      const nodes = [h('div', { class: 'heat-corner' })];
      for (const m of modeList) nodes.push(h('div', { class: 'heat-col', text: m, title: m }));
      for (const r of regionList) {
        nodes.push(h('div', { class: 'heat-row', text: r, title: r }));
        for (const m of modeList) {
          const cell = h('div', { class: 'heat-cell', testid: 'heatmap-cell', dataset: { region: r, shipMode: m } });
          withTip(cell, () => heatTip(r, m));
          heatCells.set(`${r}|${m}`, cell);
          nodes.push(cell);
        }
      }
      grid.replaceChildren(...nodes);
    }
    let newest = -Infinity;
    for (const [k, cell] of heatCells) {
      const rec = latest.get(k);
      cell._rec = rec;
      if (!rec || !isNum(rec.value)) {
        cell.className = 'heat-cell empty-cell';
        cell.style.backgroundColor = '';
        cell.replaceChildren('—');
        cell.dataset.value = '';
        continue;
      }
      newest = Math.max(newest, rec.window_start);
      const unrated = rec.status === 'unrated';
      cell.className = `heat-cell${unrated ? ' unrated' : ''}`;
      cell.style.backgroundColor = heatColor(rec.value);
      if (unrated) cell.style.backgroundColor = heatColor(rec.value).replace('rgb(', 'rgba(').replace(')', ', 0.35)');
      cell.dataset.value = String(rec.value);
      cell.dataset.status = rec.status || '';
      cell.replaceChildren(`${(rec.value * 100).toFixed(0)}%`, h('small', { text: `n ${fmtCompact(rec.denominator ?? 0)}` }));
    }
    $('#heatmap-window').textContent = isNum(newest) ? `latest window ${fmtDay(newest)}` : '';
  }
  function heatTip(region, mode) {
    const cell = heatCells.get(`${region}|${mode}`);
    const rec = cell && cell._rec;
    if (!rec) return h('div', null, h('div', { class: 'tt-title', text: `${region} · ${mode}` }), h('div', { class: 'muted', text: 'no window yet' }));
    return h('div', null,
      h('div', { class: 'tt-title', text: `${region} · ${mode}` }),
      kvList([
        ['on-time rate', isNum(rec.value) ? `${(rec.value * 100).toFixed(1)}%` : '—'],
        ['on time / deliveries', `${fmtNumber(rec.numerator)} / ${fmtNumber(rec.denominator)}`],
        ['status', rec.status || '—'],
        ['window (UTC)', `${fmtEvent(rec.window_start)} → ${fmtEvent(rec.window_end)}`],
        ['version', `${rec.version ?? '—'}${rec.final ? ' (final)' : ' (open)'}`],
      ]));
  }

  // ------------------------------------------------------------------------------------------
  // Deviation alerts
  // ------------------------------------------------------------------------------------------
  const devEls = new Map();
  function addDeviation(d, fresh) {
    if (!d || !d.id) return;
    if (!state.devSeen.has(d.id)) {
      state.devSeen.add(d.id);
      if (state.devSeen.size > 300000) state.devSeen.clear();
      state.devCounts.all += 1;
      if (state.devCounts[d.severity] != null) state.devCounts[d.severity] += 1;
      const tc = state.typeCounts.get(d.type) || { n: 0, critical: 0, warning: 0, info: 0 };
      tc.n += 1;
      if (tc[d.severity] != null) tc[d.severity] += 1;
      state.typeCounts.set(d.type, tc);
      if (fresh !== null) state.devArrivals.push(Date.now()); // live, not from a snapshot
      if (state.devArrivals.length > 5000) state.devArrivals.splice(0, state.devArrivals.length - 5000);
    } else if (state.devs.has(d.id)) {
      state.devs.set(d.id, d);
      return;
    }
    if (d.type && !state.devTypes.has(d.type)) {
      state.devTypes.add(d.type);
      const sel = $('#alert-type');
      const opts = Array.from(state.devTypes).sort().map((t) => h('option', { value: t, text: devLabel(t) }));
      sel.replaceChildren(h('option', { value: '', text: 'All types' }), ...opts);
      sel.value = state.typeFilter;
    }
    state.devs.set(d.id, d);
    state.devOrder.unshift(d.id);
    d._fresh = !!fresh;
    if (state.devOrder.length > MAX_DEVS) {
      for (const id of state.devOrder.splice(MAX_DEVS)) {
        state.devs.delete(id);
        devEls.delete(id);
      }
    }
  }
  function devContextText(d) {
    if (d.order_id) return d.order_id;
    const c = d.context || {};
    const dims = Object.entries(c).filter(([k]) => k !== 'kpi').map(([k, v]) => `${k}=${v}`).join(', ');
    return c.kpi ? `${c.kpi}${dims ? ` · ${dims}` : ' · global'}` : dims;
  }
  function devItem(d) {
    let li = devEls.get(d.id);
    if (li) return li;
    li = h('li', { class: `dev sev-${d.severity}${d._fresh ? ' fresh' : ''}`, testid: 'deviation-item', dataset: { id: d.id, severity: d.severity, type: d.type } },
      h('span', { class: 'bar' }),
      h('div', { style: 'min-width:0' },
        h('div', { class: 'dev-top' },
          h('span', { class: 'dev-type', text: devLabel(d.type) }),
          h('span', { class: 'dev-order', text: devContextText(d) })),
        h('div', { class: 'dev-summary', text: d.summary || '', title: d.summary || '' })),
      h('div', { class: 'dev-time' },
        h('span', { text: fmtEvent(d.event_time), title: 'event time (UTC)' }),
        h('span', { class: 'wall', text: `detected ${fmtWall(d.detected_at)}`, title: 'wall-clock detection time' })));
    li.addEventListener('click', () => {
      if (d.order_id) openOrder(d.order_id);
      else openDeviation(d.id);
    });
    // Highlight a live arrival once (re-inserting the node would replay the animation).
    li.addEventListener('animationend', () => li.classList.remove('fresh'), { once: true });
    devEls.set(d.id, li);
    return li;
  }
  function renderDeviations() {
    for (const k of ['all', 'critical', 'warning', 'info']) {
      const b = $(`#severity-chips [data-count="${k}"]`);
      if (b) b.textContent = fmtCompact(state.devCounts[k]);
    }
    const items = [];
    for (const id of state.devOrder) {
      const d = state.devs.get(id);
      if (!d) continue;
      if (state.sevFilter !== 'all' && d.severity !== state.sevFilter) continue;
      if (state.typeFilter && d.type !== state.typeFilter) continue;
      items.push(devItem(d));
      if (items.length >= SHOWN_DEVS) break;
    }
    // Keyed update: only new or re-ordered nodes are (re)inserted, so a highlight plays once.
    const list = $('#dev-list');
    const top = list.scrollTop;
    items.forEach((node, i) => {
      if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
    });
    while (list.children.length > items.length) list.lastElementChild.remove();
    list.scrollTop = top;
    for (const id of state.devOrder.slice(0, 20)) {
      const d = state.devs.get(id);
      if (d) d._fresh = false;
    }
    renderTypeBars();
    const empty = $('#dev-empty');
    empty.hidden = items.length > 0;
    empty.textContent = state.devOrder.length ? 'No deviations match the filter.' : 'Waiting for deviations…';
  }

  function renderTypeBars() {
    const types = Array.from(state.typeCounts.entries()).sort((a, b) => b[1].n - a[1].n);
    const max = Math.max(1, ...types.map(([, t]) => t.n));
    const rows = types.map(([type, t]) => {
      const sev = t.critical ? 'critical' : t.warning ? 'warning' : 'info';
      const row = h('div', {
        class: `bar-row clickable${state.typeFilter === type ? ' selected' : ''}`,
        title: `${t.critical} critical, ${t.warning} warning, ${t.info} info; click to filter the alerts`,
      },
      h('span', { class: 'lbl', text: devLabel(type) }),
      h('span', { class: 'track' }, h('span', { class: `fill ${sev}`, style: `width:${((t.n / max) * 100).toFixed(1)}%` })),
      h('span', { class: 'val', text: fmtCompact(t.n) }));
      row.addEventListener('click', () => {
        state.typeFilter = state.typeFilter === type ? '' : type;
        $('#alert-type').value = state.typeFilter;
        invalidate('devs');
      });
      return row;
    });
    $('#type-bars').replaceChildren(...(rows.length ? rows : [h('div', { class: 'empty small', text: 'No deviations yet.' })]));
  }

  // ------------------------------------------------------------------------------------------
  // Agent activity: live actions and the case list (refreshed when actions arrive)
  // ------------------------------------------------------------------------------------------
  function onActions(list) {
    const now = Date.now();
    const touched = new Set();
    const quiet = state.actions.filter((a) => now - a.at < 10000).length < 10;
    for (const a of list) {
      state.actions.unshift({ ...a, at: now, fresh: quiet && list.length <= 3 });
      state.actionsTotal += 1;
      const t = state.toolCounts.get(a.tool) || { done: 0, pending: 0 };
      if (a.status === 'pending_approval') t.pending += 1;
      else t.done += 1;
      state.toolCounts.set(a.tool, t);
      touched.add(a.case_id);
    }
    if (state.actions.length > MAX_ACTIONS) state.actions.length = MAX_ACTIONS;
    invalidate('actions');
    scheduleCasesRefresh();
    if (drawer.caseId && touched.has(drawer.caseId)) loadCase(drawer.caseId);
  }
  function paramsText(p) {
    if (!p || typeof p !== 'object') return '';
    return Object.entries(p).slice(0, 4).map(([k, v]) => {
      if (k.endsWith('_cents') && isNum(v)) return `${k.replace(/_cents$/, '')} ${money.format(v / 100)}`;
      if (v && typeof v === 'object') return `${k} {…}`;
      const s = String(v);
      return `${k} ${s.length > 40 ? `${s.slice(0, 40)}…` : s}`;
    }).join(' · ');
  }
  function actionItem(a) {
    const li = h('li', { class: a.fresh ? 'fresh' : '', dataset: { caseId: a.case_id } },
      h('span', { class: 'tool' }, a.tool, ' ', a.status === 'pending_approval' ? h('span', { class: 'badge pending_approval', text: 'needs approval' }) : null),
      h('span', { class: 'when', text: fmtAgo(a.at), title: fmtWall(a.at) }),
      h('span', { class: 'meta', text: `${a.agent || 'agent'} · ${a.case_id}${a.params ? ` · ${paramsText(a.params)}` : ''}`, title: `${a.case_id}\n${JSON.stringify(a.params)}` }));
    li.addEventListener('click', () => openCase(a.case_id));
    return li;
  }
  function renderActions() {
    const shortList = state.actions.slice(0, 40).map(actionItem);
    $('#action-feed').replaceChildren(...shortList);
    $('#action-empty').hidden = state.actions.length > 0;
    for (const a of state.actions) a.fresh = false;
    const pending = Array.from(state.toolCounts.values()).reduce((s, t) => s + t.pending, 0);
    $('#activity-summary').textContent = state.actionsTotal
      ? `${nf0.format(state.actionsTotal)} actions · ${nf0.format(pending)} awaiting approval`
      : '';
    if (state.view === 'agents') {
      $('#action-feed-full').replaceChildren(...state.actions.slice(0, 150).map(actionItem));
      const tools = Array.from(state.toolCounts.entries()).sort((a, b) => (b[1].done + b[1].pending) - (a[1].done + a[1].pending));
      const max = Math.max(1, ...tools.map(([, t]) => t.done + t.pending));
      $('#tool-bars').replaceChildren(...tools.map(([tool, t]) => h('div', { class: 'bar-row', title: `${t.done} done, ${t.pending} awaiting approval` },
        h('span', { class: 'lbl', text: tool }),
        h('span', { class: 'track' }, h('span', { class: 'fill', style: `width:${(((t.done + t.pending) / max) * 100).toFixed(1)}%` })),
        h('span', { class: 'val', text: nf0.format(t.done + t.pending) }))));
      if (!tools.length) $('#tool-bars').replaceChildren(h('div', { class: 'empty small', text: 'No actions since the page opened.' }));
      $('#tools-total').textContent = state.actionsTotal ? `${nf0.format(state.actionsTotal)} total` : '';
    }
  }

  let casesTimer = null;
  let casesInFlight = false;
  let casesAgain = false;
  let lastCasesAt = 0;
  function scheduleCasesRefresh() {
    if (casesInFlight) { casesAgain = true; return; }
    if (casesTimer) return;
    const wait = Math.max(0, 1500 - (Date.now() - lastCasesAt));
    casesTimer = setTimeout(refreshCases, wait);
  }
  async function refreshCases() {
    casesTimer = null;
    casesInFlight = true;
    lastCasesAt = Date.now();
    try {
      // The overview shows a few; the Agents view a page of 100.
      const r = await api(`/cases?limit=${state.view === 'agents' ? 100 : 14}`);
      state.cases = (r && r.items) || [];
      state.casesLoaded = true;
      invalidate('cases');
    } catch (e) {
      // Kept as it was; the next actions message (or reconnect) tries again.
      state.casesError = e.message;
      invalidate('cases');
    } finally {
      casesInFlight = false;
      if (casesAgain) { casesAgain = false; scheduleCasesRefresh(); }
    }
  }
  function caseRowClick(c) {
    if (c.order_id) openOrder(c.order_id, { caseId: c.case_id });
    else openCase(c.case_id);
  }
  function renderCases() {
    const recent = state.cases.slice(0, 14).map((c) => {
      const li = h('li', { dataset: { caseId: c.case_id } },
        h('span', { class: 'cid', text: c.order_id || c.case_id, title: c.case_id }),
        h('span', { class: 'when' }, h('span', { class: `badge ${c.status}`, text: humanize(c.status) })),
        h('span', { class: 'meta', text: `${c.agent || '—'} · ${devLabel(c.type)} · ${fmtAgo(c.updated)}` }));
      li.addEventListener('click', () => caseRowClick(c));
      return li;
    });
    $('#recent-cases').replaceChildren(...recent);
    $('#cases-empty').hidden = recent.length > 0;
    $('#cases-empty').textContent = !state.casesLoaded && state.casesError ? `Could not load cases: ${state.casesError}` : 'No cases yet.';
    if (state.view === 'agents') {
      const rows = state.cases.filter((c) => !state.caseFilter || c.status === state.caseFilter).map((c) => {
        const tr = h('tr', { dataset: { caseId: c.case_id } },
          h('td', { class: 'mono', text: c.case_id }),
          h('td', null, h('span', { class: `badge ${c.status}`, text: humanize(c.status) })),
          h('td', { text: c.agent || '—' }),
          h('td', { text: devLabel(c.type) }),
          h('td', { class: 'mono', text: c.order_id || '—' }),
          h('td', { text: fmtAgo(c.updated), title: fmtWall(c.updated) }));
        tr.addEventListener('click', () => caseRowClick(c));
        return tr;
      });
      $('#cases-body').replaceChildren(...rows);
      $('#cases-table-empty').hidden = rows.length > 0;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Orders
  // ------------------------------------------------------------------------------------------
  const orderQuery = { q: '', status: '', region: '', ship_mode: '', min_risk: '', offset: 0, limit: 50 };
  let ordersSeq = 0;
  let ordersLoaded = false;
  let orderSearchTimer = null;
  async function loadOrders() {
    ordersLoaded = true;
    const seq = ++ordersSeq;
    $('#orders-total').textContent = 'loading…';
    try {
      const r = await api(`/orders${query(orderQuery)}`);
      if (seq !== ordersSeq) return;
      renderOrders(r || { total: 0, items: [] });
    } catch (e) {
      if (seq !== ordersSeq) return;
      $('#orders-total').textContent = '';
      $('#orders-body').replaceChildren();
      const empty = $('#orders-empty');
      empty.hidden = false;
      empty.textContent = `Could not load orders: ${e.message}`;
    }
  }
  function riskBar(risk) {
    if (!isNum(risk)) return h('span', { class: 'muted', text: '—' });
    const cls = risk >= 0.8 ? 'crit' : risk >= 0.5 ? 'warn' : '';
    return h('span', { class: `riskbar ${cls}`, title: `predicted-late probability ${(risk * 100).toFixed(1)}%` },
      h('span', { class: 'track' }, h('span', { class: 'fill', style: `width:${Math.max(2, risk * 100).toFixed(1)}%` })),
      h('span', { text: `${(risk * 100).toFixed(0)}%` }));
  }
  function renderOrders(r) {
    const items = r.items || [];
    const rows = items.map((o) => {
      const devCount = Array.isArray(o.deviations) ? o.deviations.length : o.deviations;
      const tr = h('tr', { testid: 'order-row', dataset: { orderId: o.order_id }, class: drawer.orderId === o.order_id ? 'selected' : '' },
        h('td', { class: 'mono', text: o.order_id }),
        h('td', null, h('span', { class: `badge ${o.status}`, text: humanize(o.status) })),
        h('td', { class: 'mono', text: o.customer_id || '—', title: o.segment || '' }),
        h('td', { text: o.region || '—' }),
        h('td', { text: o.ship_mode || '—' }),
        h('td', { text: o.carrier || '—' }),
        h('td', { class: 'num', text: isNum(o.amount) ? money.format(o.amount) : '—' }),
        h('td', { text: fmtEvent(o.created_ts) }),
        h('td', { text: fmtEvent(o.promised_ts) }),
        h('td', null, riskBar(o.risk)),
        h('td', { class: 'num', text: devCount ? String(devCount) : '' }));
      tr.addEventListener('click', () => openOrder(o.order_id));
      return tr;
    });
    $('#orders-body').replaceChildren(...rows);
    const empty = $('#orders-empty');
    empty.hidden = rows.length > 0;
    empty.textContent = 'No orders match.';
    const total = isNum(r.total) ? r.total : items.length;
    $('#orders-total').textContent = `${nf0.format(total)} order${total === 1 ? '' : 's'}`;
    const from = total ? orderQuery.offset + 1 : 0;
    const to = orderQuery.offset + items.length;
    $('#orders-page').textContent = `${nf0.format(from)}–${nf0.format(to)} of ${nf0.format(total)}`;
    $('#orders-prev').disabled = orderQuery.offset === 0;
    $('#orders-next').disabled = to >= total;
  }
  function bindOrders() {
    const search = $('#order-search');
    search.addEventListener('input', () => {
      clearTimeout(orderSearchTimer);
      orderSearchTimer = setTimeout(() => {
        orderQuery.q = search.value.trim();
        orderQuery.offset = 0;
        loadOrders();
      }, 250);
    });
    $('#order-filters').addEventListener('submit', (e) => {
      e.preventDefault();
      clearTimeout(orderSearchTimer);
      orderQuery.q = search.value.trim();
      orderQuery.offset = 0;
      loadOrders();
    });
    for (const [id, key] of [['#order-status', 'status'], ['#order-region', 'region'], ['#order-shipmode', 'ship_mode'], ['#order-risk', 'min_risk']]) {
      $(id).addEventListener('change', (e) => {
        orderQuery[key] = e.target.value;
        orderQuery.offset = 0;
        loadOrders();
      });
    }
    $('#orders-refresh').addEventListener('click', loadOrders);
    $('#orders-prev').addEventListener('click', () => {
      orderQuery.offset = Math.max(0, orderQuery.offset - orderQuery.limit);
      loadOrders();
    });
    $('#orders-next').addEventListener('click', () => {
      orderQuery.offset += orderQuery.limit;
      loadOrders();
    });
  }

  // ------------------------------------------------------------------------------------------
  // Drawer: order drill-down, deviation, case
  // ------------------------------------------------------------------------------------------
  const drawer = {
    kind: null,
    orderId: null,
    deviationId: null,
    caseId: null, // the case shown in the agent section
    caseIds: [], // [{case_id, status, type}]
    cases: new Map(), // case_id -> full case
    pending: new Map(), // case_id -> {messages, since, beats}
    seq: 0,
    triggerBody: null,
  };
  function openDrawer() {
    const d = $('#drawer');
    d.classList.add('open');
    d.setAttribute('aria-hidden', 'false');
    $('#scrim').hidden = false;
  }
  function closeDrawer() {
    const d = $('#drawer');
    d.classList.remove('open');
    d.setAttribute('aria-hidden', 'true');
    $('#scrim').hidden = true;
    drawer.kind = null;
    drawer.orderId = null;
    drawer.deviationId = null;
    drawer.caseId = null;
    $$('#orders-body tr.selected').forEach((tr) => tr.classList.remove('selected'));
  }
  function drawerHead(title, sub, badges) {
    return h('div', { class: 'd-head' },
      h('div', { class: 'd-title' }, h('h2', { text: title }), sub ? h('div', { class: 'sub', text: sub }) : null),
      h('div', { style: 'display:flex;gap:6px;align-items:center' }, badges),
      h('button', { class: 'btn ghost small d-close', title: 'Close (Esc)', text: 'Close', onclick: closeDrawer }));
  }
  function drawerLoading(title) {
    $('#drawer-body').replaceChildren(drawerHead(title, 'loading…'),
      h('div', { class: 'd-section' }, h('div', { class: 'skeleton', style: 'width:60%' }), h('div', { class: 'skeleton', style: 'width:85%' }), h('div', { class: 'skeleton', style: 'width:40%' })));
    openDrawer();
  }
  function drawerError(title, e) {
    $('#drawer-body').replaceChildren(drawerHead(title, ''), h('div', { class: 'd-section' }, h('div', { class: 'msg-err', text: e.message })));
  }

  async function openOrder(orderId, opts = {}) {
    const seq = ++drawer.seq;
    drawer.kind = 'order';
    drawer.orderId = orderId;
    drawer.deviationId = null;
    drawer.caseId = null;
    $$('#orders-body tr').forEach((tr) => tr.classList.toggle('selected', tr.dataset.orderId === orderId));
    drawerLoading(orderId);
    let data;
    try {
      data = await api(`/orders/${enc(orderId)}`);
    } catch (e) {
      if (seq === drawer.seq) drawerError(orderId, e);
      return;
    }
    if (seq !== drawer.seq) return;
    renderOrderDetail(data, opts.caseId);
  }

  function caseRefs(list) {
    return (list || []).map((c) => (typeof c === 'string' ? { case_id: c } : c)).filter((c) => c && c.case_id);
  }

  function renderOrderDetail(data, preferCase) {
    const o = data.order || {};
    const devs = (data.deviations || []).slice().sort((a, b) => (b.event_time - a.event_time) || ((b.detected_at || 0) - (a.detected_at || 0)));
    const refs = caseRefs(data.cases);
    for (const c of refs) if (c.messages) drawer.cases.set(c.case_id, c);
    drawer.caseIds = refs;
    const newestDev = devs[0];
    drawer.triggerBody = () => (newestDev ? { deviation_id: newestDev.id } : { order_id: o.order_id || drawer.orderId });
    const facts = [
      ['Customer', o.customer_id], ['Segment', o.segment], ['Region', o.region], ['Ship mode', o.ship_mode],
      ['Warehouse', o.warehouse], ['Carrier', o.carrier], ['Amount', isNum(o.amount) ? money.format(o.amount) : null],
      ['Created (event)', fmtEvent(o.created_ts)], ['Promised (event)', fmtEvent(o.promised_ts)], ['Last event', fmtEvent(o.last_ts)],
    ];
    const risk = (data.risk || []).filter((p) => isNum(p.risk));
    const currentRisk = isNum(o.risk) ? o.risk : risk.length ? risk[risk.length - 1].risk : null;
    const timeline = (data.timeline || []).slice().sort((a, b) => a.ts - b.ts);

    const body = h('div', { testid: 'order-detail', class: 'drawer-stack', dataset: { orderId: o.order_id || drawer.orderId }, style: 'display:flex;flex-direction:column;gap:14px' },
      drawerHead(o.order_id || drawer.orderId, [o.segment, o.region, o.ship_mode].filter(Boolean).join(' · '),
        [h('span', { class: `badge ${o.status}`, text: humanize(o.status || 'unknown') }), riskBar(currentRisk)]),
      h('section', { class: 'd-section' },
        h('div', { class: 'facts' }, facts.map(([k, v]) => h('div', { class: 'fact' }, h('span', { text: k }), h('span', { text: v ?? '—', title: v ?? '' }))))),
      risk.length ? h('section', { class: 'd-section' },
        h('header', null, h('h3', { text: 'Predicted-late risk' }), h('span', { class: 'muted small', text: `now ${isNum(currentRisk) ? `${(currentRisk * 100).toFixed(0)}%` : '—'} · warn 50% · critical 80%` })),
        riskChart(risk)) : null,
      h('section', { class: 'd-section' },
        h('header', null, h('h3', { text: 'Timeline' }), h('span', { class: 'muted small', text: `${timeline.length} events · event time UTC` })),
        h('ol', { class: 'timeline', testid: 'order-timeline' }, timeline.map((t) => h('li', { class: EVENT_TONE[t.type] || 't-muted', dataset: { type: t.type } },
          h('span', { class: 'tdot' }),
          h('span', { class: 'ttime', text: fmtEvent(t.ts, true) }),
          h('div', { class: 'tbody' },
            h('div', { class: 'ttype', text: humanize(t.type) }),
            detailText(t.detail) ? h('div', { class: 'tdetail', text: detailText(t.detail) }) : null))))),
      h('section', { class: 'd-section' },
        h('header', null, h('h3', { text: 'Deviations' }), h('span', { class: 'muted small', text: String(devs.length) })),
        devs.length ? h('ul', { class: 'mini-devs' }, devs.map((d) => h('li', { dataset: { id: d.id } },
          h('span', { class: `badge ${d.severity}`, text: d.severity }),
          h('span', { class: 's', title: d.summary }, h('b', { text: devLabel(d.type) }), ' — ', d.summary || ''),
          h('span', { class: 'muted small', text: fmtEvent(d.event_time) })))) : h('div', { class: 'muted small', text: 'No deviations on this order.' })),
      agentSection(newestDev ? `Run the agent on the newest deviation (${devLabel(newestDev.type)})` : 'Run the agent on this order'));
    $('#drawer-body').replaceChildren(body);
    openDrawer();
    const chosen = preferCase || (refs.length ? newestCaseRef(refs).case_id : null);
    selectCase(chosen);
  }
  function newestCaseRef(refs) {
    return newestBy(refs, 'updated') || refs[refs.length - 1];
  }
  function detailText(d) {
    if (d == null) return '';
    if (typeof d === 'string') return d;
    if (typeof d !== 'object') return String(d);
    return Object.entries(d).filter(([, v]) => v != null && v !== '').map(([k, v]) => `${humanize(k)}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
  }
  function riskChart(points) {
    const W = 600;
    const H = 90;
    const pad = 4;
    const t0 = points[0].at;
    const t1 = points[points.length - 1].at;
    const x = (t) => (t1 === t0 ? W : ((t - t0) / (t1 - t0)) * W);
    const y = (v) => pad + (1 - v) * (H - 2 * pad);
    let d = '';
    points.forEach((p, i) => { d += `${i ? 'L' : 'M'}${x(p.at).toFixed(1)},${y(p.risk).toFixed(1)}`; });
    if (points.length === 1) d = `M0,${y(points[0].risk).toFixed(1)}L${W},${y(points[0].risk).toFixed(1)}`;
    const chart = svg('svg', { class: 'risk-chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' },
      svg('line', { class: 'grid', x1: 0, x2: W, y1: y(0), y2: y(0) }),
      svg('line', { class: 'grid', x1: 0, x2: W, y1: y(1), y2: y(1) }),
      svg('line', { class: 'thr warn', x1: 0, x2: W, y1: y(0.5), y2: y(0.5) }),
      svg('line', { class: 'thr crit', x1: 0, x2: W, y1: y(0.8), y2: y(0.8) }),
      svg('path', { class: 'area', d: `${d}L${points.length === 1 ? W : x(t1).toFixed(1)},${H}L0,${H}Z` }),
      svg('path', { class: 'line', d }));
    withTip(chart, () => h('div', { text: 'risk over event time' }));
    chart.addEventListener('mousemove', (e) => {
      const r = chart.getBoundingClientRect();
      const t = t0 + ((e.clientX - r.left) / Math.max(1, r.width)) * (t1 - t0);
      let best = points[0];
      for (const p of points) if (Math.abs(p.at - t) < Math.abs(best.at - t)) best = p;
      showTip(e, h('div', null, h('div', { class: 'tt-title', text: `${(best.risk * 100).toFixed(1)}%` }), h('div', { class: 'muted', text: `${fmtEvent(best.at, true)} UTC` })));
    });
    return h('div', null, chart, h('div', { class: 'risk-legend' }, h('span', { text: fmtEvent(t0) }), h('span', { text: fmtEvent(t1) })));
  }

  async function openDeviation(id) {
    const seq = ++drawer.seq;
    drawer.kind = 'deviation';
    drawer.orderId = null;
    drawer.deviationId = id;
    drawer.caseId = null;
    drawerLoading(id);
    let d;
    try {
      d = await api(`/deviations/${enc(id)}`);
    } catch (e) {
      if (seq === drawer.seq) drawerError(id, e);
      return;
    }
    if (seq !== drawer.seq) return;
    renderDeviationDetail(d);
  }
  function renderDeviationDetail(d) {
    // The case of a deviation has the deviation's id; `case_status` says whether it exists.
    const c = d.case_status !== undefined ? d.case_status : d.case;
    const status = c && typeof c === 'object' ? c.status : c;
    const caseId = c ? (typeof c === 'object' && c.case_id ? c.case_id : d.id) : null;
    drawer.caseIds = caseId ? [{ case_id: caseId, status, type: d.type }] : [];
    drawer.triggerBody = () => ({ deviation_id: d.id });
    const ev = Object.entries(d.evidence || {}).map(([k, v]) => [humanize(k), fmtNumber(v)]);
    const ctx = Object.entries(d.context || {}).map(([k, v]) => [humanize(k), String(v)]);
    const body = h('div', { class: 'drawer-stack', testid: 'deviation-detail', style: 'display:flex;flex-direction:column;gap:14px' },
      drawerHead(devLabel(d.type), d.id, [h('span', { class: `badge ${d.severity}`, text: d.severity })]),
      h('section', { class: 'd-section' },
        h('div', { text: d.summary || '' }),
        h('div', { class: 'facts' },
          h('div', { class: 'fact' }, h('span', { text: 'Event time (UTC)' }), h('span', { text: fmtEvent(d.event_time, true) })),
          h('div', { class: 'fact' }, h('span', { text: 'Detected (wall)' }), h('span', { text: `${fmtWall(d.detected_at)} · ${fmtAgo(d.detected_at)}` })),
          d.order_id ? h('div', { class: 'fact' }, h('span', { text: 'Order' }), h('a', { href: '#', text: d.order_id, onclick: (e) => { e.preventDefault(); openOrder(d.order_id); } })) : null),
        ctx.length ? h('div', null, h('div', { class: 'sub-head', text: 'Context' }), kvList(ctx)) : null,
        ev.length ? h('div', null, h('div', { class: 'sub-head', text: 'Evidence' }), kvList(ev)) : null),
      agentSection('Run the agent on this deviation'));
    $('#drawer-body').replaceChildren(body);
    openDrawer();
    selectCase(caseId);
  }

  async function openCase(caseId) {
    const seq = ++drawer.seq;
    drawer.kind = 'case';
    drawer.orderId = null;
    drawer.deviationId = null;
    drawerLoading(caseId);
    let c;
    try {
      c = await api(`/cases/${enc(caseId)}`);
    } catch (e) {
      if (seq === drawer.seq) drawerError(caseId, e);
      return;
    }
    if (seq !== drawer.seq) return;
    const dev = c.deviation || {};
    if (dev.order_id) {
      drawer.cases.set(caseId, c);
      openOrder(dev.order_id, { caseId });
      return;
    }
    drawer.cases.set(caseId, c);
    drawer.caseIds = [{ case_id: caseId, status: c.status, type: dev.type }];
    drawer.triggerBody = () => (dev.id ? { deviation_id: dev.id } : null);
    const body = h('div', { class: 'drawer-stack', style: 'display:flex;flex-direction:column;gap:14px' },
      drawerHead(caseId, dev.summary || devLabel(dev.type), dev.severity ? [h('span', { class: `badge ${dev.severity}`, text: dev.severity })] : []),
      agentSection('Run the agent again'));
    $('#drawer-body').replaceChildren(body);
    openDrawer();
    selectCase(caseId);
  }

  /** The agent part of a drawer: trigger, case tabs, case (status, actions, conversation), follow-up. */
  function agentSection(triggerTitle) {
    const note = h('input', { class: 'input', id: 'trigger-note', placeholder: 'Note for the agent (optional)' });
    const trigger = h('button', { class: 'btn primary', testid: 'trigger-agent', id: 'trigger-agent', title: triggerTitle, text: 'Run agent' });
    trigger.addEventListener('click', () => triggerAgent(trigger, note));
    const role = h('select', { class: 'select', id: 'followup-role', 'aria-label': 'Speak as' },
      h('option', { value: 'operator', text: 'Operator' }), h('option', { value: 'customer', text: 'Customer' }));
    const input = h('textarea', { class: 'input', id: 'followup-input', testid: 'followup-input', rows: 1, placeholder: 'Follow-up for the agent… (Enter sends, Shift+Enter new line)' });
    const send = h('button', { class: 'btn primary', id: 'followup-send', testid: 'followup-send', text: 'Send' });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        send.click();
      }
    });
    send.addEventListener('click', () => sendFollowup(input, role, send));
    return h('section', { class: 'd-section', id: 'agent-section' },
      h('header', null, h('h3', { text: 'Agent' }), h('span', { class: 'muted small', text: triggerTitle })),
      h('div', { class: 'trigger-row' }, note, trigger),
      h('div', { class: 'case-tabs', id: 'case-tabs' }),
      h('div', { id: 'case-main' }),
      h('div', { class: 'followup', id: 'followup' }, role, input, send));
  }
  function renderCaseTabs() {
    const tabs = $('#case-tabs');
    if (!tabs) return;
    const refs = drawer.caseIds;
    if (refs.length <= 1) { tabs.replaceChildren(); return; }
    tabs.replaceChildren(...refs.map((c) => {
      const full = drawer.cases.get(c.case_id);
      const status = (full && full.status) || c.status;
      const type = c.type || (full && full.deviation && full.deviation.type);
      return h('button', { class: `chip${c.case_id === drawer.caseId ? ' active' : ''}`, title: c.case_id, onclick: () => selectCase(c.case_id) },
        type ? devLabel(type) : c.case_id.split(':')[0], status ? h('span', { class: `badge ${status}`, text: humanize(status) }) : null);
    }));
  }
  function selectCase(caseId) {
    drawer.caseId = caseId;
    renderCaseTabs();
    const follow = $('#followup');
    if (follow) follow.hidden = !caseId;
    if (!caseId) {
      const main = $('#case-main');
      if (main) main.replaceChildren(h('div', { class: 'muted small', text: 'No agent case yet. Run the agent to open one.' }));
      return;
    }
    if (drawer.cases.has(caseId)) renderCase(drawer.cases.get(caseId));
    else {
      const main = $('#case-main');
      if (main) main.replaceChildren(h('div', { class: 'skeleton', style: 'width:50%' }));
    }
    loadCase(caseId);
  }
  const caseLoads = new Map();
  async function loadCase(caseId) {
    if (caseLoads.get(caseId)) { caseLoads.set(caseId, 'again'); return; }
    caseLoads.set(caseId, 'loading');
    try {
      const c = await api(`/cases/${enc(caseId)}`);
      drawer.cases.set(caseId, c);
      const p = drawer.pending.get(caseId);
      if (p) {
        const msgs = (c.messages || []).length;
        const agentReplies = (c.messages || []).filter((m) => m.role === 'agent').length;
        if (c.status !== 'queued' && (msgs > p.messages || agentReplies > p.agentReplies || p.beats > 6)) drawer.pending.delete(caseId);
      }
      const ref = drawer.caseIds.find((r) => r.case_id === caseId);
      if (ref) ref.status = c.status;
      else if (drawer.caseId === caseId) drawer.caseIds.push({ case_id: caseId, status: c.status, type: c.deviation && c.deviation.type });
      if (drawer.caseId === caseId) {
        renderCase(c);
        renderCaseTabs();
      }
    } catch (e) {
      if (drawer.caseId === caseId) {
        const main = $('#case-main');
        if (main && !drawer.cases.has(caseId)) main.replaceChildren(h('div', { class: 'msg-err small', text: `Could not load case ${caseId}: ${e.message}` }));
      }
    } finally {
      const again = caseLoads.get(caseId) === 'again';
      caseLoads.delete(caseId);
      if (again) loadCase(caseId);
    }
  }
  /** Heartbeat: re-read cases whose agent run was started from this page and is not done. */
  function refreshPendingCases() {
    for (const [caseId, p] of drawer.pending) {
      p.beats += 1;
      if (p.beats > 24) { drawer.pending.delete(caseId); continue; }
      if (caseId === drawer.caseId) loadCase(caseId);
    }
  }
  function roleLabel(role) {
    return { agent: 'Agent', operator: 'Operator', customer: 'Customer', deviation: 'Deviation', system: 'System' }[role] || humanize(role);
  }
  function renderCase(c) {
    const main = $('#case-main');
    if (!main) return;
    const runs = c.runs || [];
    const run = runs[runs.length - 1];
    const out = (run && run.output) || {};
    const pending = drawer.pending.has(c.case_id);
    const conv = h('div', { class: 'conversation', testid: 'case-conversation', id: 'case-conversation', dataset: { caseId: c.case_id, pending: pending ? '1' : '' } },
      (c.messages || []).map((m) => h('div', { class: `msg ${m.role}`, dataset: { role: m.role, seq: m.seq } },
        h('span', { class: 'who', text: `${roleLabel(m.role)} · ${fmtWall(m.at)}` }),
        h('div', { class: 'body', text: m.body }))),
      pending ? h('div', { class: 'msg agent typing' }, h('span', { class: 'who', text: 'Agent' }), h('div', { class: 'body', text: 'working on it…' })) : null);
    const actions = c.actions || [];
    const retrieved = (run && run.retrieved) || [];
    const keepScroll = $('#case-conversation');
    const atBottom = !keepScroll || keepScroll.scrollHeight - keepScroll.scrollTop - keepScroll.clientHeight < 40;
    main.replaceChildren(h('div', { style: 'display:flex;flex-direction:column;gap:10px' },
      h('div', { class: 'case-head' },
        h('span', { class: `badge ${c.status}`, testid: 'case-status', dataset: { status: c.status, caseId: c.case_id }, text: humanize(c.status) }),
        run ? h('span', { class: 'muted small', text: `${run.agent} · ${run.backend}` }) : null,
        h('span', { class: 'cid', text: c.case_id })),
      run ? h('div', { class: 'run-meta' },
        h('span', null, 'outcome ', h('b', { text: humanize(run.outcome) })),
        isNum(out.confidence) ? h('span', null, 'confidence ', h('b', { text: `${(out.confidence * 100).toFixed(0)}%` })) : null,
        h('span', null, 'runs ', h('b', { text: String(runs.length) })),
        run.error ? h('span', { class: 'msg-err', text: run.error }) : null) : null,
      out.rationale && out.customer_message ? h('div', { class: 'muted small', text: `Rationale: ${out.rationale}` }) : null,
      actions.length ? h('div', { class: 'actions-list' }, actions.map((a) => h('span', { class: `action-pill ${a.status || ''}`, title: JSON.stringify(a.params) },
        a.tool, a.params ? h('span', { class: 'muted', text: paramsText(a.params) }) : null))) : null,
      retrieved.length ? h('div', { class: 'citations', title: 'policy chunks retrieved for the latest run' }, retrieved.map((r) => h('span', { text: r }))) : null,
      conv));
    if (atBottom) conv.scrollTop = conv.scrollHeight;
  }

  async function triggerAgent(btn, noteInput) {
    const body = drawer.triggerBody && drawer.triggerBody();
    if (!body) { toast('Nothing to run the agent on.', 'err'); return; }
    const note = noteInput.value.trim();
    if (note) body.note = note;
    btn.disabled = true;
    btn.textContent = 'Running…';
    btn.dataset.state = 'running';
    delete btn.dataset.caseId;
    try {
      const r = await api('/trigger-agent', { method: 'POST', body });
      btn.dataset.state = 'done';
      btn.dataset.caseId = r.case_id;
      const before = drawer.cases.get(r.case_id);
      drawer.pending.set(r.case_id, {
        messages: before ? (before.messages || []).length : 0,
        agentReplies: before ? (before.messages || []).filter((m) => m.role === 'agent').length : 0,
        beats: 0,
      });
      if (!drawer.caseIds.some((c) => c.case_id === r.case_id)) drawer.caseIds.unshift({ case_id: r.case_id, status: r.status });
      noteInput.value = '';
      toast(r.status === 'queued' ? `Agent queued on ${r.case_id}` : `Agent ran on ${r.case_id}: ${humanize(r.status)}`, 'ok');
      selectCase(r.case_id);
    } catch (e) {
      btn.dataset.state = 'failed';
      toast(`Could not run the agent: ${e.message}`, 'err');
    } finally {
      btn.disabled = false;
      btn.textContent = 'Run agent';
    }
  }

  async function sendFollowup(input, roleSel, btn) {
    const caseId = drawer.caseId;
    const text = input.value.trim();
    if (!caseId || !text) return;
    const role = roleSel.value;
    btn.disabled = true;
    input.disabled = true;
    const conv = $('#case-conversation');
    if (conv) {
      conv.append(h('div', { class: `msg ${role}`, dataset: { role, optimistic: '1' } }, h('span', { class: 'who', text: `${roleLabel(role)} · sending` }), h('div', { class: 'body', text })),
        h('div', { class: 'msg agent typing' }, h('span', { class: 'who', text: 'Agent' }), h('div', { class: 'body', text: 'replying…' })));
      conv.scrollTop = conv.scrollHeight;
    }
    try {
      const c = await api(`/cases/${enc(caseId)}/messages`, { method: 'POST', body: { role, body: text } });
      input.value = '';
      if (c && c.case_id) {
        drawer.cases.set(caseId, c);
        if (drawer.caseId === caseId) { renderCase(c); renderCaseTabs(); }
      } else {
        loadCase(caseId);
      }
    } catch (e) {
      toast(`Follow-up failed: ${e.message}`, 'err');
      if (drawer.cases.has(caseId) && drawer.caseId === caseId) renderCase(drawer.cases.get(caseId));
    } finally {
      btn.disabled = false;
      input.disabled = false;
      if (drawer.caseId === caseId) input.focus();
    }
  }

  // ------------------------------------------------------------------------------------------
  // Knowledge base
  // ------------------------------------------------------------------------------------------
  const KB_TEMPLATE = `---
id: gift-cards
title: Gift card policy
policy_type: payments
effective_date: 2026-01-01
jurisdiction: [global]
version: 1
sections: [gift-card-refunds]
---
# Gift card policy

## [gift-card-refunds] Refunds of gift-card payments

Orders paid with a gift card are refunded to a new gift card within 2 business days.
`;
  let kbSeq = 0;
  let kbTimer = null;
  async function kbSearch() {
    const q = $('#kb-query').value.trim();
    if (!q) {
      $('#kb-hits').replaceChildren();
      $('#kb-empty').hidden = false;
      return;
    }
    const seq = ++kbSeq;
    $('#kb-empty').hidden = true;
    try {
      const r = await api(`/kb/search${query({ q, k: 8, mode: $('#kb-mode').value, type: $('#kb-type').value, jurisdiction: $('#kb-jurisdiction').value })}`);
      if (seq !== kbSeq) return;
      $('#kb-embedder').textContent = r.embedder ? `embedder ${String(r.embedder).split(':')[0]}` : '';
      $('#kb-embedder').title = r.embedder || '';
      const hits = r.items || [];
      $('#kb-hits').replaceChildren(...hits.map((x, i) => kbHit(x, i)));
      const empty = $('#kb-empty');
      empty.hidden = hits.length > 0;
      empty.textContent = 'Nothing found.';
    } catch (e) {
      if (seq !== kbSeq) return;
      $('#kb-hits').replaceChildren();
      const empty = $('#kb-empty');
      empty.hidden = false;
      empty.textContent = `Search failed: ${e.message}`;
    }
  }
  function kbHit(x, i) {
    const scores = [`score ${isNum(x.score) ? x.score.toFixed(3) : '—'}`];
    if (isNum(x.dense_score)) scores.push(`dense ${x.dense_score.toFixed(3)}`);
    if (isNum(x.bm25_score)) scores.push(`bm25 ${x.bm25_score.toFixed(2)}`);
    const li = h('li', { class: 'kb-hit', testid: 'kb-hit', dataset: { chunkId: x.chunk_id } },
      h('div', { class: 'kb-hit-head' },
        h('span', { class: 'muted', text: `${i + 1}.` }),
        h('span', { class: 'kb-hit-title', text: x.section_title || x.doc_title || x.chunk_id }),
        x.policy_type ? h('span', { class: 'badge info', text: humanize(x.policy_type) }) : null,
        h('span', { class: 'kb-hit-score', text: scores.join(' · ') })),
      h('div', { class: 'kb-hit-id', text: `${x.doc_title ? `${x.doc_title} · ` : ''}${x.chunk_id}` }),
      h('div', { class: 'kb-hit-text', text: x.text || '' }));
    if ((x.text || '').length > 360) {
      const more = h('button', { class: 'more', type: 'button', text: 'Show all' });
      more.addEventListener('click', () => {
        li.classList.toggle('expanded');
        more.textContent = li.classList.contains('expanded') ? 'Show less' : 'Show all';
      });
      li.append(more);
    }
    return li;
  }
  function bindKb() {
    $('#kb-form').addEventListener('submit', (e) => {
      e.preventDefault();
      clearTimeout(kbTimer);
      kbSearch();
    });
    $('#kb-query').addEventListener('input', () => {
      clearTimeout(kbTimer);
      kbTimer = setTimeout(kbSearch, 400);
    });
    for (const id of ['#kb-mode', '#kb-type', '#kb-jurisdiction']) $(id).addEventListener('change', kbSearch);
    $('#kb-doc-text').value = KB_TEMPLATE;
    $('#kb-add').addEventListener('submit', async (e) => {
      e.preventDefault();
      const name = $('#kb-doc-name').value.trim();
      const text = $('#kb-doc-text').value;
      const msg = $('#kb-add-msg');
      const btn = $('#kb-add-btn');
      if (!name || !text.trim()) return;
      btn.disabled = true;
      msg.className = 'small';
      msg.textContent = 'Adding and indexing…';
      try {
        const r = await api('/kb/documents', { method: 'POST', body: { name, text } });
        msg.className = 'small ok';
        msg.textContent = `Added ${r && r.document_id ? r.document_id : name}; it is searchable now.`;
        toast(`Document ${r && r.document_id ? r.document_id : name} added`, 'ok');
      } catch (err) {
        msg.className = 'small err';
        msg.textContent = err.status === 422 ? `Rejected: ${err.message}` : `Failed: ${err.message}`;
      } finally {
        btn.disabled = false;
      }
    });
  }

  // ------------------------------------------------------------------------------------------
  // Settings: thresholds and system health
  // ------------------------------------------------------------------------------------------
  async function loadThresholds(render) {
    try {
      const r = await api('/settings/thresholds');
      state.thresholds = (r && r.thresholds) || {};
      state.thresholdsVersion = r && r.version;
      for (const k of KPIS) dirtyCards.add(k.name);
      invalidate('cards', 'heatmap');
      renderLegend();
      if (render) renderThresholds();
    } catch (e) {
      if (render) {
        $('#thresholds-body').replaceChildren(h('tr', null, h('td', { colspan: 6, class: 'msg-err', text: `Could not load thresholds: ${e.message}` })));
      }
    }
  }
  function renderThresholds() {
    $('#thresholds-version').textContent = state.thresholdsVersion != null ? `version ${state.thresholdsVersion}` : '';
    const names = Object.keys(state.thresholds).sort((a, b) => {
      const ia = KPIS.findIndex((k) => k.name === a);
      const ib = KPIS.findIndex((k) => k.name === b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    const rows = names.map((kpi) => thresholdRow(kpi, state.thresholds[kpi]));
    $('#thresholds-body').replaceChildren(...rows);
    if (!rows.length) $('#thresholds-body').replaceChildren(h('tr', null, h('td', { colspan: 6, class: 'muted', text: 'No KPI has thresholds.' })));
  }
  function thresholdRow(kpi, th) {
    const unit = (KPI_BY_NAME.get(kpi) || {}).unit;
    const step = unit === 'ratio' ? '0.01' : 'any';
    const warn = h('input', { class: 'input thr-input', type: 'number', step, value: String(th.warn), 'aria-label': `${kpi} warn` });
    const crit = h('input', { class: 'input thr-input', type: 'number', step, value: String(th.critical), 'aria-label': `${kpi} critical` });
    const minc = h('input', { class: 'input thr-input', type: 'number', step: '1', min: '0', value: String(th.min_count), 'aria-label': `${kpi} min count` });
    const save = h('button', { class: 'btn primary small', text: 'Save', disabled: true });
    const reset = h('button', { class: 'btn ghost small', text: 'Reset', disabled: true });
    const msg = h('div', { class: 'row-msg' });
    const tr = h('tr', { testid: 'threshold-row', dataset: { kpi } },
      h('td', null, h('div', { text: (KPI_BY_NAME.get(kpi) || {}).label || kpi }), h('div', { class: 'muted small mono', text: kpi })),
      h('td', null, h('span', { class: 'badge', text: th.direction === 'below' ? 'bad below' : 'bad above', title: `direction: ${th.direction}` })),
      h('td', { class: 'num' }, warn), h('td', { class: 'num' }, crit), h('td', { class: 'num' }, minc),
      h('td', null, h('div', { style: 'display:flex;gap:6px;justify-content:flex-end' }, reset, save), msg));
    const validate = () => {
      const w = Number(warn.value);
      const c = Number(crit.value);
      const m = Number(minc.value);
      const changed = w !== th.warn || c !== th.critical || m !== th.min_count;
      let err = '';
      if (warn.value === '' || crit.value === '' || !Number.isFinite(w) || !Number.isFinite(c)) err = 'numbers needed';
      else if (!Number.isInteger(m) || m < 0) err = 'min count: a whole number';
      else if (th.direction === 'below' && c > w) err = 'critical must not be above warn';
      else if (th.direction === 'above' && c < w) err = 'critical must not be below warn';
      tr.classList.toggle('changed', changed);
      save.disabled = !changed || !!err;
      reset.disabled = !changed;
      msg.className = `row-msg${err ? ' err' : ''}`;
      msg.textContent = changed ? err : '';
      return { w, c, m };
    };
    for (const i of [warn, crit, minc]) i.addEventListener('input', validate);
    reset.addEventListener('click', () => {
      warn.value = String(th.warn);
      crit.value = String(th.critical);
      minc.value = String(th.min_count);
      validate();
    });
    save.addEventListener('click', async () => {
      const { w, c, m } = validate();
      save.disabled = true;
      try {
        const r = await api('/settings/thresholds', { method: 'PUT', body: { [kpi]: { warn: w, critical: c, min_count: m } } });
        if (r && r.thresholds) {
          state.thresholds = r.thresholds;
          state.thresholdsVersion = r.version;
        } else {
          state.thresholds[kpi] = { ...th, warn: w, critical: c, min_count: m };
        }
        const fresh = thresholdRow(kpi, state.thresholds[kpi]);
        tr.replaceWith(fresh);
        const fmsg = $('.row-msg', fresh);
        fmsg.className = 'row-msg ok';
        fmsg.textContent = 'applied to the running job';
        $('#thresholds-version').textContent = state.thresholdsVersion != null ? `version ${state.thresholdsVersion}` : '';
        for (const k of KPIS) dirtyCards.add(k.name);
        invalidate('cards', 'heatmap');
        renderLegend();
      } catch (e) {
        msg.className = 'row-msg err';
        msg.textContent = e.message;
        save.disabled = false;
      }
    });
    return tr;
  }

  function renderHealth() {
    const pill = $('#health-status');
    const hl = state.health;
    let status = 'unknown';
    let text = 'Health …';
    if (state.healthError && !hl) { status = 'unreachable'; text = 'Unreachable'; }
    else if (state.healthError) { status = 'unreachable'; text = 'Unreachable'; }
    else if (hl) {
      status = String(hl.status || 'unknown').toLowerCase();
      text = { ok: 'Healthy', degraded: 'Degraded', down: 'Down', error: 'Error' }[status] || humanize(status);
    }
    pill.dataset.status = status;
    $('.txt', pill).textContent = text;
    pill.title = hl ? `status ${hl.status} · version ${hl.version} · up ${fmtDur((hl.uptime_s || 0) * 1000)}` : (state.healthError || '');
    if (!hl) {
      $('#health-components').replaceChildren(h('div', { class: 'muted', text: state.healthError ? `GET /health: ${state.healthError}` : 'Loading…' }));
      return;
    }
    const df = (hl.components || {}).dataflow || {};
    if (!state.heartbeat && isNum(df.watermark_ms)) {
      $('#watermark').textContent = fmtEvent(df.watermark_ms);
      $('#lag').textContent = isNum(df.watermark_lag_ms) ? fmtDur(df.watermark_lag_ms) : '—';
    }
    $('#health-meta').textContent = `v${hl.version || '?'} · up ${fmtDur((hl.uptime_s || 0) * 1000)} · checked ${fmtWall(lastHealthAt)}`;
    const comps = hl.components || {};
    const cards = Object.entries(comps).map(([name, c]) => {
      const obj = c && typeof c === 'object' ? c : { status: c };
      const st = String(obj.status || obj.state || '').toLowerCase();
      const tone = /^(ok|running|up|connected|consuming|ready|healthy|live|open|enabled)$/.test(st) ? 'ok'
        : /^(not_used|disabled|off|finished|none)$/.test(st) ? ''
          : /^(degraded|lagging|idle|starting|warn|warning|replaying|draining)$/.test(st) ? 'warn'
            : st ? 'crit' : '';
      const pairs = [];
      const walk = (o, prefix) => {
        for (const [k, v] of Object.entries(o)) {
          if (k === 'status' && !prefix) continue;
          if (v && typeof v === 'object' && !Array.isArray(v)) { walk(v, `${prefix}${humanize(k)} · `); continue; }
          let val = Array.isArray(v) ? v.join(', ') : v;
          if (isNum(v) && /_ms$/.test(k) && /lag|latency|age|uptime/.test(k)) val = fmtDur(v);
          else if (isNum(v) && /(_ms|_at)$/.test(k) && v > 1e11) val = `${fmtEvent(v, true)}`;
          else if (isNum(v)) val = fmtNumber(v);
          pairs.push([`${prefix}${humanize(k)}`, val == null ? '—' : String(val)]);
        }
      };
      walk(obj, '');
      return h('div', { class: 'health-card', dataset: { component: name } },
        h('div', { class: 'hc-head' }, h('span', { text: name === 'kb' ? 'Knowledge base' : name === 'websocket' ? 'WebSockets' : humanize(name).replace(/^./, (c) => c.toUpperCase()) }),
          st ? h('span', { class: `badge ${tone}`, text: humanize(st) }) : null),
        kvList(pairs.slice(0, 14)));
    });
    $('#health-components').replaceChildren(...cards);
  }

  // ------------------------------------------------------------------------------------------
  // Views (hash routing)
  // ------------------------------------------------------------------------------------------
  const VIEWS = ['overview', 'orders', 'agents', 'knowledge', 'settings'];
  function route() {
    const v = location.hash.replace(/^#/, '');
    const view = VIEWS.includes(v) ? v : 'overview';
    state.view = view;
    for (const sec of $$('main > .view')) sec.hidden = sec.dataset.view !== view;
    for (const a of $$('#tabs a')) a.classList.toggle('active', a.dataset.view === view);
    if (view === 'orders' && !ordersLoaded) loadOrders();
    if (view === 'agents') { invalidate('cases', 'actions'); if (state.cases.length < 100) scheduleCasesRefresh(); }
    if (view === 'settings') { loadThresholds(true); invalidate('health'); }
    if (view === 'knowledge') setTimeout(() => $('#kb-query').focus(), 0);
  }

  // ------------------------------------------------------------------------------------------
  // Start
  // ------------------------------------------------------------------------------------------
  function bindChrome() {
    $('#severity-chips').addEventListener('click', (e) => {
      const b = e.target.closest('.chip');
      if (!b) return;
      state.sevFilter = b.dataset.sev;
      for (const c of $$('#severity-chips .chip')) c.classList.toggle('active', c === b);
      invalidate('devs');
    });
    $('#alert-type').addEventListener('change', (e) => {
      state.typeFilter = e.target.value;
      invalidate('devs');
    });
    $('#case-chips').addEventListener('click', (e) => {
      const b = e.target.closest('.chip');
      if (!b) return;
      state.caseFilter = b.dataset.status;
      for (const c of $$('#case-chips .chip')) c.classList.toggle('active', c === b);
      invalidate('cases');
    });
    $('#scrim').addEventListener('click', closeDrawer);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && $('#drawer').classList.contains('open')) closeDrawer();
      if (e.key === '/' && !/^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName)) {
        e.preventDefault();
        location.hash = '#orders';
        setTimeout(() => $('#order-search').focus(), 0);
      }
    });
    window.addEventListener('hashchange', route);
  }

  function start() {
    buildCards();
    renderLegend();
    renderHeatmap();
    renderConnection();
    renderHealth();
    bindChrome();
    bindOrders();
    bindKb();
    route();
    kpiSocket.connect();
    devSocket.connect();
    loadThresholds(state.view === 'settings');
    loadKpiHistory();
    loadHealth();
    scheduleCasesRefresh();
  }

  // Test and debugging handle (read-only use).
  window.dashboard = { state, drawer, openOrder, openCase, openDeviation };
  start();
}());
