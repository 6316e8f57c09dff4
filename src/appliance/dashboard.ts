/**
 * GET /: one small, self-refreshing HTML page: memory use, merger savings and progress, and
 * every region with the line a user can paste to reach it. Rendered on the server; no scripts.
 */
import { formatSize } from '../size.js';
import type { Appliance } from './appliance.js';

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function renderDashboard(appliance: Appliance): string {
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
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>memfabric appliance</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-top:1em}td,th{border-bottom:1px solid #ddd;padding:.4em .8em;text-align:left}
.bar{width:30em;height:1em;background:#eee}.bar div{height:1em;background:#3a7}
code{background:#f4f4f4;padding:0 .3em}
</style></head><body>
<h1>memfabric appliance</h1>
<p>NBD on <code>${escapeHtml(host)}:${port}</code> · ${stats.regions} region(s) · ${stats.nbd.connectionsOpen} connection(s)</p>
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
</table>
<p>API: <code>GET /v1/regions</code>, <code>POST /v1/regions</code>, <code>GET /v1/stats</code>, <code>GET /metrics</code></p>
</body></html>
`;
}
