// ferry status page. Everything shown comes from /v1 with the token the
// operator enters (kept in this tab's sessionStorage, sent only in the
// Authorization header, never in a URL). Every value reaches the DOM as
// text (textContent / setAttribute), never as markup.
'use strict';

(() => {
  const TOKEN_KEY = 'ferry.token';
  const REFRESH_MS = 2000;
  // Rows drawn per table, fetched a page at a time: a server with a
  // million ledgers costs the page a few requests, not one giant answer.
  const ROW_CAP = 2000;
  const PAGE = 500;
  const HISTORY = 90;
  const REQUEST_TIMEOUT_MS = 10000;
  // entries/s needs a long enough interval to mean anything.
  const RATE_MIN_INTERVAL_MS = 1000;

  const $ = (sel) => document.querySelector(sel);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    askingToken: false,
    refreshing: false,
    again: false,
    heads: new Map(), // ledger -> { incarnation, head, at }
    rates: new Map(), // ledger -> entries/s
    lagHistory: new Map(), // exporter -> [lag, …]
    stream: null, // AbortController of the events stream
    streamDenied: false,
    debounce: 0,
  };

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function headers(accept) {
    const h = { Accept: accept };
    if (state.token) h.Authorization = 'Bearer ' + state.token;
    return h;
  }

  async function api(path) {
    // A stalled answer must not hold every later refresh back.
    const r = await fetch(path, {
      headers: headers('application/json'), cache: 'no-store', credentials: 'omit',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (!r.ok) {
      let message = r.status + ' ' + r.statusText;
      try {
        const body = await r.json();
        if (body && body.error && body.error.message) message = body.error.message;
      } catch (_) { /* not JSON: keep the status line */ }
      throw new HttpError(r.status, message);
    }
    return r.json();
  }

  // ---- DOM helpers: text only ----

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, String(v));
    }
    for (const k of kids) e.append(k instanceof Node ? k : String(k));
    return e;
  }

  const td = (text, cls) => el('td', cls ? { class: cls } : {}, text);

  function note(section, text, denied) {
    const p = section.querySelector('.note');
    p.textContent = text || '';
    p.hidden = !text;
    p.classList.toggle('denied', !!denied);
  }

  // ---- formatting ----

  const fmtInt = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function fmtSeconds(ms) {
    if (ms === null || ms === undefined) return 'unknown';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' m ' + String(Math.floor(s % 60)).padStart(2, '0') + ' s';
    return Math.floor(s / 3600) + ' h ' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + ' m';
  }

  const secondsAttr = (ms) => (ms === null || ms === undefined ? '' : (ms / 1000).toFixed(1));

  function fmtRate(r) {
    if (r === undefined) return '—';
    return r < 10 ? r.toFixed(1) : fmtInt(Math.round(r));
  }

  // ---- token ----

  function askToken(message) {
    state.askingToken = true;
    stopStream();
    $('#main').hidden = true;
    $('#health-banner').hidden = true;
    $('#forget-token').hidden = true;
    $('#token-form').hidden = false;
    const err = $('#token-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('#token-input').focus();
  }

  function useToken(token) {
    state.token = token || null;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    state.askingToken = false;
    state.streamDenied = false;
    stopStream();
    $('#token-form').hidden = true;
    refresh();
  }

  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('#token-input');
    const token = input.value.trim();
    input.value = '';
    if (token) useToken(token);
  });

  $('#forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    askToken('');
  });

  // ---- refresh ----

  async function refresh() {
    if (state.askingToken) return;
    if (state.refreshing) { state.again = true; return; }
    state.refreshing = true;
    try {
      await refreshOnce();
    } finally {
      state.refreshing = false;
      if (state.again) { state.again = false; refresh(); }
    }
  }

  async function refreshOnce() {
    let ledgers;
    try {
      ledgers = await loadLedgers();
    } catch (e) {
      if (e.status === 401) {
        const refused = !!state.token;
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = null;
        askToken(refused ? 'The server refused that token.' : '');
        return;
      }
      if (!(e instanceof HttpError)) { // the server is unreachable: keep what is shown
        $('#updated').textContent = 'server unreachable, retrying…';
        return;
      }
      ledgers = e;
    }
    $('#main').hidden = false;
    $('#forget-token').hidden = !state.token;
    const [exporters, health, sources, pins] = await Promise.allSettled([
      loadExporters(), api('/v1/health'), api('/v1/sources'), api('/v1/pins'),
    ]);
    section('#ledgers', 'ledgers', ledgers instanceof Error ? { status: 'rejected', reason: ledgers }
      : { status: 'fulfilled', value: ledgers }, renderLedgers);
    section('#exporters', 'exporters', exporters, renderExporters);
    section('#sources', 'outbox sources', sources, renderSources);
    section('#pins', 'pins', pins, renderPins);
    renderHealth(health);
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    startStream();
  }

  // Draws one section, or says why it cannot: a 403 there leaves the rest
  // of the page working.
  function section(sel, what, result, render) {
    const s = $(sel);
    s.dataset.denied = 'false';
    if (result.status === 'fulfilled') {
      s.dataset.loaded = 'true';
      render(s, result.value);
      return;
    }
    const e = result.reason;
    clearSection(s);
    if (e.status === 403) {
      s.dataset.denied = 'true';
      note(s, 'This token may not see ' + what + '.', true);
    } else {
      note(s, 'Could not load ' + what + ': ' + e.message, true);
    }
  }

  function clearSection(s) {
    const body = s.querySelector('tbody') || s.querySelector('.list');
    body.replaceChildren();
    showTable(s, false);
  }

  // An empty table shows only its note, not a row of headers.
  function showTable(s, rows) {
    const table = s.querySelector(':scope > table');
    if (table) table.hidden = !rows;
  }

  // ---- ledgers ----

  async function loadLedgers() {
    const rows = [];
    let after = null;
    for (;;) {
      const q = new URLSearchParams({ limit: String(Math.min(PAGE, ROW_CAP - rows.length)) });
      if (after !== null) q.set('after', after);
      const page = await api('/v1/ledgers?' + q);
      rows.push(...page.ledgers);
      if (!page.next) return { rows, more: false };
      if (rows.length >= ROW_CAP) return { rows, more: true };
      after = page.next;
    }
  }

  function updateRate(l, now) {
    const prev = state.heads.get(l.name);
    if (prev && prev.incarnation === l.incarnation && now - prev.at < RATE_MIN_INTERVAL_MS) return;
    if (prev && prev.incarnation === l.incarnation) {
      state.rates.set(l.name, Math.max(0, l.head - prev.head) / ((now - prev.at) / 1000));
    } else {
      state.rates.delete(l.name);
    }
    state.heads.set(l.name, { incarnation: l.incarnation, head: l.head, at: now });
  }

  function renderLedgers(s, { rows, more }) {
    const now = performance.now();
    const seen = new Set();
    const trs = rows.map((l) => {
      seen.add(l.name);
      updateRate(l, now);
      const rate = state.rates.get(l.name);
      return el('tr', { 'data-ledger': l.name, 'data-head': l.head, 'data-entries': l.entries },
        td(l.name, 'name'), td(fmtInt(l.first), 'num'), td(fmtInt(l.head), 'num'),
        td(fmtInt(l.entries), 'num'), td(fmtBytes(l.bytes), 'num'), td(fmtRate(rate), 'num'));
    });
    for (const name of state.heads.keys()) {
      if (!seen.has(name)) { state.heads.delete(name); state.rates.delete(name); }
    }
    s.querySelector('tbody').replaceChildren(...trs);
    showTable(s, rows.length > 0);
    $('#ledgers-count').textContent = more ? fmtInt(ROW_CAP) + '+' : fmtInt(rows.length);
    if (more) note(s, 'Showing the first ' + fmtInt(ROW_CAP) + ' ledgers by name; more exist.');
    else note(s, rows.length ? '' : 'No ledgers yet.');
  }

  // ---- exporters ----

  async function loadExporters() {
    const list = await api('/v1/exporters?limit=' + PAGE);
    for (const ex of list) {
      let next = ex.next;
      while (next && ex.ledgers.length < ROW_CAP) {
        const q = new URLSearchParams({ after: next, limit: String(Math.min(PAGE, ROW_CAP - ex.ledgers.length)) });
        const page = await api('/v1/exporters/' + encodeURIComponent(ex.name) + '?' + q);
        ex.ledgers.push(...page.ledgers);
        next = page.next;
      }
      ex.more = !!next;
    }
    return list;
  }

  function stat(label, value, cls) {
    return el('div', { class: 'stat' + (cls ? ' ' + cls : '') },
      el('span', { class: 'label' }, label), el('span', { class: 'value' }, value));
  }

  function stateSpan(s) {
    return el('span', { class: 'state state-' + s }, s.replace('_', ' '));
  }

  // An inline SVG line of the exporter's total lag over the refreshes this
  // page has seen (the server keeps no history).
  function sparkline(history) {
    const NS = 'http://www.w3.org/2000/svg';
    const w = 180, h = 36, pad = 2;
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('role', 'img');
    const max = Math.max(1, ...history);
    // One sample is drawn as a flat line; more spread over the width.
    const samples = history.length > 1 ? history : [history[0], history[0]];
    const step = (w - 2 * pad) / (samples.length - 1);
    const points = samples.map((v, i) =>
      (pad + i * step).toFixed(1) + ',' + (h - pad - (v / max) * (h - 2 * pad)).toFixed(1));
    const line = document.createElementNS(NS, 'polyline');
    line.setAttribute('points', points.join(' '));
    const title = document.createElementNS(NS, 'title');
    title.textContent = 'lag over the last ' + history.length + ' refreshes, peak ' + fmtInt(Math.max(0, ...history));
    svg.append(title, line);
    return svg;
  }

  function renderExporter(ex) {
    const hist = state.lagHistory.get(ex.name) || [];
    hist.push(ex.lag);
    if (hist.length > HISTORY) hist.shift();
    state.lagHistory.set(ex.name, hist);
    const stuck = ex.stuck_ledgers > 0;
    const head = el('div', { class: 'exporter-head' },
      el('h3', {}, ex.name), el('span', { class: 'muted' }, ex.sink || '(orphaned)'),
      stat('state', stateSpan(ex.state)),
      stat('lag (ids)', fmtInt(ex.lag), 'lag'),
      stat('oldest unexported', ex.lag === 0 ? '0 s' : fmtSeconds(ex.oldest_unexported_age_ms), 'lag'),
      stat('stuck ledgers', fmtInt(ex.stuck_ledgers) + ' of ' + fmtInt(ex.ledgers_total)),
      stat('max_lag', ex.max_lag_ms === null ? 'none' : fmtSeconds(ex.max_lag_ms)),
      stat('lag, last ' + hist.length + ' refreshes', sparkline(hist), 'trend'));
    const rows = ex.ledgers.map((l) => el('tr', {
      'data-exporter-ledger': l.ledger, 'data-lag': l.lag,
      'data-lag-seconds': secondsAttr(l.oldest_unexported_age_ms), 'data-stuck': l.stuck,
      class: l.stuck ? 'stuck' : null,
    },
    td(l.ledger, 'name'), td(fmtInt(l.cursor), 'num'), td(fmtInt(l.head), 'num'), td(fmtInt(l.lag), 'num'),
    td(l.lag === 0 ? '0 s' : fmtSeconds(l.oldest_unexported_age_ms), 'num'), el('td', {}, stateSpan(l.state)),
    td(fmtInt(l.attempts), 'num'), td(l.last_error || '', 'err')));
    const table = el('table', {},
      el('thead', {}, el('tr', {}, ...['ledger', 'cursor', 'head', 'lag', 'lag (s)', 'state', 'attempts', 'last error']
        .map((h, i) => el('th', { class: i >= 1 && i <= 4 || i === 6 ? 'num' : null }, h)))),
      el('tbody', {}, ...rows));
    const parts = [head, table];
    if (ex.more) {
      parts.push(el('p', { class: 'note' }, 'Showing ' + fmtInt(ex.ledgers.length) + ' of ' + fmtInt(ex.ledgers_total) + ' ledgers.'));
    }
    return el('div', {
      class: 'exporter' + (stuck ? ' stuck' : ''), 'data-exporter': ex.name, 'data-state': ex.state,
      'data-lag': ex.lag, 'data-lag-seconds': secondsAttr(ex.oldest_unexported_age_ms),
      'data-stuck': ex.stuck_ledgers,
    }, ...parts);
  }

  function renderExporters(s, list) {
    const names = new Set(list.map((ex) => ex.name));
    for (const name of state.lagHistory.keys()) if (!names.has(name)) state.lagHistory.delete(name);
    s.querySelector('.list').replaceChildren(...list.map(renderExporter));
    $('#exporters-count').textContent = fmtInt(list.length);
    note(s, list.length ? '' : 'No exporters configured.');
  }

  // ---- sources, pins, health ----

  function renderSources(s, list) {
    s.querySelector('tbody').replaceChildren(...list.map((src) => el('tr', {
      'data-source': src.name, 'data-stuck': src.stuck, class: src.stuck ? 'stuck' : null,
    },
    td(src.name, 'name'), td(src.driver), td(src.table, 'name'), el('td', {}, stateSpan(String(src.state))),
    td(fmtInt(src.drained), 'num'), td(fmtInt(src.backlog), 'num'),
    td(fmtSeconds(src.oldest_pending_age_ms), 'num'), td(src.last_error || '', 'err'))));
    showTable(s, list.length > 0);
    note(s, list.length ? '' : 'No outbox sources configured.');
  }

  function renderPins(s, list) {
    const now = Date.now();
    s.querySelector('tbody').replaceChildren(...list.map((p) => el('tr', { 'data-pin': p.pin },
      td(p.pin, 'name'), td(p.by || ''), td(fmtInt(Object.keys(p.heads).length), 'num'),
      td(fmtSeconds(p.age_ms), 'num'), td(fmtSeconds(Math.max(0, p.expires_at - now)), 'num'))));
    showTable(s, list.length > 0);
    note(s, list.length ? '' : 'No pins held.');
  }

  function renderHealth(result) {
    const pill = $('#health-pill');
    const banner = $('#health-banner');
    if (result.status === 'rejected') {
      const denied = result.reason.status === 403;
      pill.dataset.status = denied ? 'hidden' : 'error';
      pill.textContent = denied ? 'health: this token may not see it' : 'health: ' + result.reason.message;
      banner.hidden = true;
      return;
    }
    const h = result.value;
    pill.dataset.status = h.status;
    pill.textContent = h.status.replace('_', ' ');
    banner.dataset.status = h.status;
    if (h.status === 'ok') { banner.hidden = true; banner.replaceChildren(); return; }
    const items = [];
    for (const ex of h.exporters) {
      for (const l of ex.stuck) {
        items.push(el('li', {}, 'exporter ' + ex.name + ', ledger ' + l.ledger + ': oldest unexported entry '
          + fmtSeconds(l.age_ms) + ' old (max_lag ' + fmtSeconds(ex.max_lag_ms) + '), ' + fmtInt(l.lag)
          + ' behind, ' + l.state.replace('_', ' ') + (l.last_error ? ': ' + l.last_error : '')));
      }
      if (ex.stuck_ledgers > ex.stuck.length) {
        items.push(el('li', {}, 'exporter ' + ex.name + ': ' + fmtInt(ex.stuck_ledgers - ex.stuck.length) + ' more stuck ledgers'));
      }
    }
    for (const src of h.sources.filter((x) => x.stuck)) {
      items.push(el('li', {}, 'source ' + src.name + ': oldest pending row ' + fmtSeconds(src.oldest_pending_age_ms)
        + ' old' + (src.last_error ? ': ' + src.last_error : '')));
    }
    const title = h.status === 'not_ready' ? 'Not ready: ' + (h.reason || 'the store refuses writes') : 'Stuck';
    banner.replaceChildren(el('strong', {}, title), el('ul', {}, ...items));
    banner.hidden = false;
  }

  // ---- live updates: /v1/events as SSE read through fetch, because
  // EventSource cannot send the Authorization header ----

  function setLive(mode, text) {
    const live = $('#live');
    live.dataset.live = mode;
    live.textContent = text;
  }

  function stopStream() {
    if (state.stream) state.stream.abort();
    state.stream = null;
  }

  function scheduleRefresh() {
    clearTimeout(state.debounce);
    state.debounce = setTimeout(refresh, 150);
  }

  function startStream() {
    if (state.stream || state.streamDenied || state.askingToken) return;
    const ctl = new AbortController();
    state.stream = ctl;
    runStream(ctl).finally(() => { if (state.stream === ctl) state.stream = null; });
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  async function runStream(ctl) {
    let delay = 1000;
    while (!ctl.signal.aborted) {
      try {
        const r = await fetch('/v1/events', { headers: headers('text/event-stream'), signal: ctl.signal, cache: 'no-store', credentials: 'omit' });
        if (r.status === 401) return; // the next refresh asks for a token
        if (r.status === 403) {
          state.streamDenied = true;
          setLive('off', 'live: off (this token may not watch events)');
          return;
        }
        if (!r.ok || !r.body) throw new Error('events: ' + r.status);
        setLive('on', 'live');
        delay = 1000;
        await readEvents(r.body, scheduleRefresh);
      } catch (_) {
        if (ctl.signal.aborted) return;
      }
      // The stream ended (server restart, lagged, network): refresh now,
      // then reconnect with backoff; the periodic refresh goes on meanwhile.
      setLive('reconnecting', 'live: reconnecting');
      scheduleRefresh();
      await sleep(delay, ctl.signal);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
        // Keep-alives are comment lines; anything with a field is an event.
        if (block.split(/\r?\n/).some((line) => line && !line.startsWith(':'))) onEvent();
      }
    }
  }

  setInterval(refresh, REFRESH_MS);
  refresh();
})();
