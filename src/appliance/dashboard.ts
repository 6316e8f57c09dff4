/**
 * The dashboard: GET / is one self-contained page that updates itself live from
 * GET /v1/dashboard (dashboard-data.ts) with inline code (dashboard-script.ts) and uPlot charts;
 * uPlot's script and stylesheet are served by the appliance from the uplot package
 * (GET /dashboard/:asset), so the page works offline and needs no CDN.
 *
 * The page is rendered with a server-side summary (memory, merger, regions) that shows without
 * JavaScript (curl, text browsers) and is replaced by the live view once the first poll answers.
 *
 * Access: GET / and GET /v1/dashboard follow the read rules of the rest of the API (auth.ts).
 * Where reads need a token (`--read-access token`, or a client off this machine), a browser
 * asking for GET / without one gets the page without data (401) whose login field, or a
 * `#token=` fragment, gives the page a token it sends with its polls; the assets are public
 * (they are uPlot's own files).
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MemfabricError } from '../errors.js';
import { formatSize } from '../size.js';
import type { Appliance } from './appliance.js';
import { dashboardView } from './dashboard-data.js';
import { DASHBOARD_SCRIPT } from './dashboard-script.js';

const require = createRequire(import.meta.url);

/**
 * The files GET /dashboard/:asset serves, from the uplot package (resolved where it is
 * installed). Each is named in a literal require.resolve so the package test sees the dependency.
 */
const ASSETS: Record<string, { resolve: () => string; type: string }> = {
  'uPlot.iife.min.js': {
    resolve: () => require.resolve('uplot/dist/uPlot.iife.min.js'),
    type: 'text/javascript; charset=utf-8',
  },
  'uPlot.min.css': {
    resolve: () => require.resolve('uplot/dist/uPlot.min.css'),
    type: 'text/css; charset=utf-8',
  },
};

/** Read once, on first use. */
const assetCache = new Map<string, Buffer>();

function asset(name: string): Buffer {
  let body = assetCache.get(name);
  if (body === undefined) {
    const file = ASSETS[name];
    if (!file) throw new MemfabricError(ErrorCodes.NOT_FOUND, `no dashboard asset ${name}`);
    body = readFileSync(file.resolve());
    assetCache.set(name, body);
  }
  return body;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function registerDashboardRoutes(app: FastifyInstance, appliance: Appliance): void {
  app.get('/', async (_request, reply) =>
    reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .send(renderDashboard(appliance)),
  );
  app.get('/v1/dashboard', async (_request, reply) =>
    reply.header('cache-control', 'no-store').send(dashboardView(appliance)),
  );
  app.get<{ Params: { asset: string } }>('/dashboard/:asset', async (request, reply) => {
    const name = request.params.asset;
    const body = asset(name);
    return reply
      .header('content-type', ASSETS[name]!.type)
      .header('cache-control', 'public, max-age=3600')
      .send(body);
  });
}

/**
 * For the error handler: a browser (it asks for HTML) refused GET / gets the page without data,
 * whose login field takes a token; API clients keep the JSON error.
 */
export function dashboardLoginPage(request: FastifyRequest, status: number): string | undefined {
  if (status !== 401 || request.method !== 'GET' || request.routeOptions.url !== '/') return undefined;
  if (!/\btext\/html\b/.test(request.headers.accept ?? '')) return undefined;
  return renderDashboard(undefined);
}

/** The page; with an appliance, its server-side summary too (without: the login page). */
export function renderDashboard(appliance: Appliance | undefined): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>memfabric appliance</title>
<link rel="stylesheet" href="/dashboard/uPlot.min.css">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{margin:0 0 .2em}h2{margin:1.2em 0 .4em;font-size:1.1em}
table{border-collapse:collapse;margin-top:.5em}td,th{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left}
.bar{width:30em;max-width:100%;height:.8em;background:#eee}.bar div{height:.8em;background:#3a7}
code{background:#f4f4f4;padding:0 .3em}
.cards{display:flex;flex-wrap:wrap;gap:.6em}.card{border:1px solid #ddd;border-radius:4px;padding:.5em .8em;min-width:10em}
.card b{display:block;font-size:1.25em}.muted{color:#777}.charts{display:flex;flex-wrap:wrap;gap:1em}
</style></head><body data-updates="0">
<h1>memfabric appliance</h1>
<p class="muted"><span id="version"></span> · up <span id="uptime">?</span> · NBD on <code id="endpoint">?</code> · <span id="status">loading…</span></p>
<form id="login" hidden><p id="login-message"></p>
<label>Token <input id="token" type="password" autocomplete="off" size="48"></label> <button>Sign in</button>
<span class="muted">(or open this page as <code>/#token=…</code>; the token stays in this tab)</span></form>
${appliance ? `<section id="summary">${renderSummary(appliance)}</section>` : ''}
<section id="live" hidden>
<div class="cards">
<div class="card">IOPS<b id="total-iops">0</b></div>
<div class="card">MB/s<b id="total-mbps">0</b></div>
<div class="card">latency p50 / p99 (10 s)<b id="latency">–</b></div>
<div class="card">connections<b id="connections">0</b></div>
<div class="card">requests<b id="requests">0</b></div>
<div class="card">errors<b id="errors">0</b></div>
</div>
<h2>Memory</h2>
<div class="bar"><div id="memory-bar" style="width:0"></div></div>
<p>used <span id="memory-used"></span>; regions hold <span id="memory-logical"></span> before sharing;
same-page merging saves <span id="merge-saving"></span>.</p>
<p>Merger: <span id="merge-scan"></span></p><div class="bar"><div id="merge-bar" style="width:0"></div></div>
<div class="charts"><div id="chart-iops" data-points="0"></div><div id="chart-mbps" data-points="0"></div><div id="chart-memory" data-points="0"></div></div>
<h2>Regions (<span id="regions-count">0</span>)</h2>
<table><thead><tr><th>name</th><th>tenant</th><th>size</th><th>state</th><th>conns</th><th>IOPS</th><th>MB/s</th><th>resident</th><th>shared</th><th>read</th><th>written</th><th>file</th><th>reach it</th></tr></thead>
<tbody id="regions"></tbody></table>
<h2>Tenants</h2>
<table><thead><tr><th>tenant</th><th>regions</th><th>resident</th><th>read</th><th>written</th></tr></thead><tbody id="tenants"></tbody></table>
<h2>Background work</h2>
<p>Migrations: <span id="migrations">none</span></p>
<p>Rebuilds: <span id="rebuilds">–</span></p>
</section>
<p class="muted">API: <code>GET /v1/regions</code>, <code>POST /v1/regions</code>, <code>GET /v1/stats</code>, <code>GET /v1/dashboard</code>, <code>GET /metrics</code></p>
<script src="/dashboard/uPlot.iife.min.js"></script>
<script>${DASHBOARD_SCRIPT}</script>
</body></html>
`;
}

/** What the page shows before (or without) its script: memory, merger, regions. */
function renderSummary(appliance: Appliance): string {
  const stats = appliance.stats();
  const { host, port } = appliance.nbdAddress;
  const usedPercent =
    stats.memory.capacityBytes === 0 ? 0 : (100 * stats.memory.usedBytes) / stats.memory.capacityBytes;
  const merger = stats.merger;
  const rows = appliance.registry
    .all()
    .map((region) => {
      const s = region.stats();
      const uri = `nbd://${host}:${port}/${region.name}`;
      return `<tr><td>${escapeHtml(region.name)}${region.name === appliance.registry.defaultRegion ? ' <em>(default)</em>' : ''}</td>
<td>${formatSize(region.size)}</td><td>${escapeHtml(region.tenant)}</td>
<td>${formatSize(s.residentBytes)}</td><td>${formatSize(s.sharedBytes)}</td>
<td>${region.readOnly ? 'read-only' : 'read-write'}${region.backing ? ', file' : ''}${region.clonedFrom ? `, clone of ${escapeHtml(region.clonedFrom)}` : ''}</td>
<td>${s.connections}</td><td>${s.reads} / ${s.writes}</td><td><code>nbdinfo ${escapeHtml(uri)}</code></td></tr>`;
    })
    .join('\n');
  // File-backed regions that do not serve (yet): loading, or why they failed.
  const pending = appliance.registry
    .pendingRegions()
    .map(
      (region) => `<tr><td>${escapeHtml(region.name)}</td>
<td>${region.size === null ? '?' : formatSize(region.size)}</td><td>${escapeHtml(region.tenant ?? '?')}</td>
<td colspan="6"><strong>${region.state}</strong>${region.error ? `: ${escapeHtml(region.error.message)}` : ''}</td></tr>`,
    )
    .join('\n');
  return `<p>${stats.regions} region(s) · ${stats.nbd.connectionsOpen} connection(s)</p>
<h2>Memory</h2>
<div class="bar"><div style="width:${usedPercent.toFixed(1)}%"></div></div>
<p>${formatSize(stats.memory.usedBytes)} of ${formatSize(stats.memory.capacityBytes)} used (${usedPercent.toFixed(1)}%);
regions hold ${formatSize(stats.memory.logicalBytes)} before sharing.</p>
${
  merger
    ? `<p>Same-page merger: ${merger.pagesShared} shared pages, ${merger.pagesSharing} more pointing at them,
${merger.zeroPages} zero pages, ${merger.fullScans} full scans; saves ${formatSize(merger.bytesSaved)}
(${merger.bytesSavedNet < 0 ? '-' : ''}${formatSize(Math.abs(merger.bytesSavedNet))} net of its ${formatSize(merger.metadataBytes)} of tables).</p>
<p>Scan: ${(100 * merger.scanFraction).toFixed(0)}% through the current full scan${merger.scanRegion === null ? '' : ` (in ${escapeHtml(merger.scanRegion)})`},
${Math.round(merger.pagesVisitedPerSecond)} pages/s, ${(100 * merger.cpuShare).toFixed(1)}% of a core (set: ${(100 * merger.cpuShareTarget).toFixed(1)}%);
the last full scan took ${(merger.lastFullScanMs / 1000).toFixed(2)} s.</p>`
    : '<p>Same-page merging is off.</p>'
}
<h2>Regions</h2>
<table><tr><th>name</th><th>size</th><th>tenant</th><th>resident</th><th>shared</th><th>kind</th><th>conns</th><th>reads / writes</th><th>reach it</th></tr>
${rows}
${pending}
</table>`;
}
