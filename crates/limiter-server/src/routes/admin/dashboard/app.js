// The dashboard: reads the admin API with the session cookie every 2 seconds and renders
// it; every change carries the session's anti-CSRF token. Data goes into the page as
// text only (never as HTML).
'use strict';

const csrf = document.querySelector('meta[name="csrf"]').content;
const EVERY_MS = 2000;
let rulesVersion = null;

async function get(path) {
  const res = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (res.status === 401) {
    window.location.assign('/dashboard/login');
    throw new Error('the session has ended');
  }
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

async function send(method, path, body, version) {
  const headers = { 'content-type': 'application/json', 'x-csrf-token': csrf };
  if (version !== undefined) headers['if-match'] = `"${version}"`;
  const res = await fetch(path, { method, credentials: 'same-origin', headers, body: JSON.stringify(body) });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(answer.detail || `${res.status}`);
  return answer;
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tableId, items, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  const rows = items.map((item) => el('tr', null, ...cells(item)));
  if (rows.length === 0) {
    const span = document.querySelectorAll(`#${tableId} thead th`).length;
    rows.push(el('tr', null, el('td', { colSpan: span, className: 'empty' }, 'None.')));
  }
  body.replaceChildren(...rows);
}

const td = (text, className) => el('td', { className: className || '' }, text);
const num = (n, digits) => td(Number(n).toFixed(digits || 0), 'num');
const ago = (ms) => `${Math.max(0, Math.round((Date.now() - ms) / 1000))} s ago`;

function chart(series, stepSeconds) {
  const svg = document.getElementById('chart');
  const ns = 'http://www.w3.org/2000/svg';
  const w = 600, h = 200, left = 44, bottom = 18;
  const rate = (c, k) => c[k] / stepSeconds;
  const kinds = [['allowed', 'allowed'], ['denied', 'denied'], ['shadow_denied', 'shadow']];
  const top = Math.max(1, ...series.flatMap((c) => kinds.map(([k]) => rate(c, k))));
  const x = (i) => left + (i * (w - left - 4)) / Math.max(1, series.length - 1);
  const y = (v) => h - bottom - (v * (h - bottom - 8)) / top;
  const parts = [];
  const line = (x1, y1, x2, y2) => {
    const l = document.createElementNS(ns, 'line');
    l.setAttribute('x1', x1); l.setAttribute('y1', y1); l.setAttribute('x2', x2); l.setAttribute('y2', y2);
    l.setAttribute('class', 'axis');
    return l;
  };
  const label = (tx, ty, text) => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', tx); t.setAttribute('y', ty); t.textContent = text;
    return t;
  };
  parts.push(line(left, h - bottom, w, h - bottom), line(left, 4, left, h - bottom));
  parts.push(label(2, 12, top.toFixed(top < 10 ? 1 : 0)), label(2, h - bottom, '0'));
  parts.push(label(left, h - 3, '−60 min'), label(w - 30, h - 3, 'now'));
  for (const [key, cls] of kinds) {
    const p = document.createElementNS(ns, 'polyline');
    p.setAttribute('class', cls);
    p.setAttribute('points', series.map((c, i) => `${x(i).toFixed(1)},${y(rate(c, key)).toFixed(1)}`).join(' '));
    parts.push(p);
  }
  svg.replaceChildren(...parts);
  // The newest point is the minute under way: the one before is the last whole minute.
  const last = series[series.length - 2] || { allowed: 0, denied: 0, shadow_denied: 0 };
  document.getElementById('chart-summary').textContent =
    `Last whole minute: ${rate(last, 'allowed').toFixed(1)} allowed/s, ${rate(last, 'denied').toFixed(1)} denied/s, ` +
    `${rate(last, 'shadow_denied').toFixed(1)} shadow-denied/s.`;
}

function renderRules(rules, version) {
  const table = document.getElementById('rules');
  // Never rebuild under a hand that is editing a rule; unchanged rules need no rebuild.
  if (version === rulesVersion || table.contains(document.activeElement)) return;
  rulesVersion = version;
  fill('rules', rules, (rule) => {
    const current = { mode: rule.mode || 'enforce', rollout: rule.rollout_percent ?? 100 };
    const mode = el('select', { name: 'mode' },
      ...['enforce', 'shadow', 'off'].map((m) => el('option', { value: m, selected: current.mode === m }, m)));
    mode.setAttribute('aria-label', `Mode of ${rule.name}`);
    const rollout = el('input', { type: 'number', min: 0, max: 100, step: 1, name: 'rollout', value: current.rollout, required: true });
    rollout.setAttribute('aria-label', `Rollout percent of ${rule.name}`);
    const apply = el('button', { type: 'button', className: 'apply' }, 'Apply');
    apply.setAttribute('aria-label', `Apply to ${rule.name}`);
    apply.addEventListener('click', async () => {
      const message = document.getElementById('rules-message');
      const percent = Number(rollout.value);
      if (rollout.value.trim() === '' || !Number.isInteger(percent) || percent < 0 || percent > 100) {
        message.textContent = `${rule.name}: the rollout must be a whole number from 0 to 100.`;
        rollout.focus();
        return;
      }
      // Only what changed, against the version shown: another admin's change in between
      // is refused (412), not overwritten.
      const patch = {};
      if (mode.value !== current.mode) patch.mode = mode.value;
      if (percent !== current.rollout) patch.rollout_percent = percent;
      if (Object.keys(patch).length === 0) {
        message.textContent = `${rule.name}: nothing to change.`;
        return;
      }
      try {
        await send('PATCH', `/v1/admin/rules/${encodeURIComponent(rule.name)}`, patch, version);
        message.textContent = `${rule.name}: ${mode.value}, ${percent} % — applied fleet-wide.`;
        rulesVersion = null;
        apply.blur();
        refresh();
      } catch (e) {
        message.textContent = `${rule.name}: not applied: ${e.message}`;
      }
    });
    return [td(rule.name), td(rule.match ? `${rule.scope} ${rule.match}` : rule.scope), el('td', null, mode), el('td', null, rollout), el('td', null, apply)];
  });
  for (const row of document.querySelectorAll('#rules tbody tr')) {
    const name = row.firstChild && row.firstChild.textContent;
    if (name) row.dataset.rule = name;
  }
}

function renderEnforcement(enforcement) {
  document.getElementById('enforce-state').textContent = enforcement.enforce ? 'on' : 'OFF (kill switch)';
  const button = document.getElementById('kill');
  button.textContent = enforcement.enforce ? 'Turn enforcement off (kill switch)' : 'Turn enforcement back on';
  button.className = enforcement.enforce ? 'danger' : '';
  button.dataset.enforce = String(enforcement.enforce);
}

document.getElementById('kill').addEventListener('click', async (event) => {
  const enforce = event.currentTarget.dataset.enforce !== 'true';
  const message = document.getElementById('kill-message');
  try {
    renderEnforcement(await send('POST', '/v1/admin/enforcement', { enforce }));
    message.textContent = enforce ? 'Enforcement is back on, fleet-wide.' : 'Enforcement is off, fleet-wide: nothing is denied.';
  } catch (e) {
    message.textContent = `Not changed: ${e.message}`;
  }
});

async function refresh() {
  const asked = await Promise.allSettled([
    get('/v1/admin/stats?window=1h&step=1m'),
    get('/v1/admin/workers'),
    get('/v1/admin/rules'),
    get('/v1/admin/enforcement'),
    get('/v1/admin/violations?since=1h&limit=1000'),
    fetch('/health/ready', { cache: 'no-store' }).then((r) => r.json()),
  ]);
  const [stats, workers, rules, enforcement, violations, ready] = asked.map((a) => (a.status === 'fulfilled' ? a.value : null));
  const failed = asked.filter((a) => a.status === 'rejected').map((a) => a.reason.message);
  // Each panel from what answered; one that did not says so instead of showing old data.
  if (stats) {
    chart(stats.series, stats.step);
    const denials = (stats.by_rule || []).filter((r) => r.denied + r.shadow_denied > 0)
      .sort((a, b) => (b.denied + b.shadow_denied) - (a.denied + a.shadow_denied));
    fill('denials', denials, (r) => [td(r.rule || '(tier policy)'), td(r.tier), num(r.denied), num(r.shadow_denied)]);
  } else {
    document.getElementById('chart-summary').textContent = 'Statistics unavailable (Redis?): the chart is not current.';
  }
  if (enforcement) renderEnforcement(enforcement);
  const redisText = document.getElementById('redis');
  const redis = ready && ready.components && ready.components.redis;
  redisText.textContent = !ready ? 'unknown: this worker did not answer'
    : redis ? `${redis.status} (circuit ${redis.circuit}, ${(redis.degraded_keyspace * 100).toFixed(0)} % of the keyspace from memory)`
      : 'not used: this worker decides in memory';
  redisText.className = !ready || (redis && redis.status !== 'ok') ? 'bad' : '';
  if (workers) {
    fill('workers', workers.workers, (w) => [
      td(w.id), td(w.address || '—'), td(w.backend, w.backend === 'redis' || w.backend === 'memory' ? '' : 'bad'),
      num(w.degraded_share * 100, 0), td(w.throttling ? 'yes' : 'no', w.throttling ? 'bad' : ''),
      num(w.checks_per_sec, 1), td(ago(w.last_seen)),
    ]);
  } else {
    fill('workers', [], () => []);
  }
  if (rules) renderRules(rules.rules || [], rules.version);
  if (violations) {
    const byClient = new Map();
    for (const v of violations.violations) byClient.set(v.client, (byClient.get(v.client) || 0) + 1);
    const top = [...byClient.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10);
    fill('clients', top, ([client, n]) => [el('td', null, el('code', null, client)), num(n)]);
    fill('violations', violations.violations.slice(0, 20), (v) => [
      td(new Date(v.time).toLocaleTimeString()), td(v.rule || '(tier policy)'), td(v.tier),
      el('td', null, el('code', null, v.client)), td(v.shadow ? 'yes' : 'no'), td(v.worker),
    ]);
  }
  const now = new Date().toLocaleTimeString();
  document.getElementById('updated').textContent = failed.length === 0
    ? `Updated ${now}` : `Updated ${now}, partly: ${failed.join('; ')}`;
}

refresh();
setInterval(refresh, EVERY_MS);
