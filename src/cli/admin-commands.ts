/**
 * `memfabric region …` and `memfabric stats`: thin clients of an appliance's admin API.
 */
import { adminRequest, type AdminBase } from '../appliance/admin-client.js';
import { formatSize } from '../size.js';
import { formatTable } from './table.js';

interface RegionView {
  name: string;
  size: number;
  tenant: string;
  readOnly: boolean;
  file: string | null;
  clonedFrom: string | null;
  stats: { residentBytes: number; sharedBytes: number; connections: number };
}

export function formatRegions(regions: RegionView[]): string {
  const header = ['NAME', 'SIZE', 'TENANT', 'RESIDENT', 'SHARED', 'CONNS', 'KIND'];
  const rows = regions.map((r) => [
    r.name,
    formatSize(r.size),
    r.tenant,
    formatSize(r.stats.residentBytes),
    formatSize(r.stats.sharedBytes),
    String(r.stats.connections),
    [
      r.readOnly ? 'read-only' : 'read-write',
      r.file ? 'file' : '',
      r.clonedFrom ? `clone of ${r.clonedFrom}` : '',
    ]
      .filter(Boolean)
      .join(', '),
  ]);
  return formatTable(header, rows);
}

export async function regionCreate(
  base: AdminBase,
  name: string,
  options: { size: string; tenant?: string; readOnly?: boolean; file?: boolean },
): Promise<RegionView & { warnings?: string[] }> {
  return adminRequest<RegionView & { warnings?: string[] }>(base, 'POST', '/v1/regions', {
    name,
    size: /^\d+$/.test(options.size) ? Number(options.size) : options.size,
    ...(options.tenant ? { tenant: options.tenant } : {}),
    ...(options.readOnly ? { readOnly: true } : {}),
    ...(options.file ? { file: true } : {}),
  });
}

export async function regionList(base: AdminBase): Promise<RegionView[]> {
  return (await adminRequest<{ regions: RegionView[] }>(base, 'GET', '/v1/regions')).regions;
}

export async function regionClone(
  base: AdminBase,
  source: string,
  name: string,
  readOnly: boolean,
): Promise<RegionView> {
  return adminRequest<RegionView>(base, 'POST', `/v1/regions/${encodeURIComponent(source)}/clone`, {
    name,
    ...(readOnly ? { readOnly: true } : {}),
  });
}

export async function regionRemove(base: AdminBase, name: string): Promise<void> {
  await adminRequest<void>(base, 'DELETE', `/v1/regions/${encodeURIComponent(name)}`);
}

export async function applianceStats(base: AdminBase): Promise<unknown> {
  return adminRequest<unknown>(base, 'GET', '/v1/stats');
}

interface StatsView {
  memory: {
    pageSize: number;
    capacityBytes: number;
    usedBytes: number;
    freeBytes: number;
    logicalBytes: number;
  };
  regions: number;
  regionStates?: Record<string, number>;
  merger?: { pagesShared: number; pagesSharing: number; zeroPages: number; fullScans: number } | null;
  nbd?: {
    connectionsOpen: number;
    connectionsTotal: number;
    bytesRead: number;
    bytesWritten: number;
    errors: number;
    requests: Record<string, number>;
  };
  endpoints?: { nbd: { host: string; port: number }; http: { host: string; port: number } };
  tenant?: string;
}

function percent(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

/** `memfabric stats` for people: what an operator looks at first, in sizes and counts. */
export function formatStats(stats: StatsView): string {
  const m = stats.memory;
  const rows: [string, string][] = [];
  if (stats.tenant !== undefined) rows.push(['tenant', stats.tenant]);
  if (stats.endpoints) {
    const { nbd, http } = stats.endpoints;
    rows.push(['endpoints', `nbd ${nbd.host}:${nbd.port}, admin ${http.host}:${http.port}`]);
  }
  rows.push(
    [
      'memory',
      `${formatSize(m.usedBytes)} used of ${formatSize(m.capacityBytes)} (${percent(m.usedBytes, m.capacityBytes)}), ${formatSize(m.freeBytes)} free`,
    ],
    ['logical', `${formatSize(m.logicalBytes)} resident in regions (before sharing)`],
  );
  const states = Object.entries(stats.regionStates ?? {})
    .filter(([state, n]) => state !== 'ready' && n > 0)
    .map(([state, n]) => `${n} ${state}`);
  rows.push(['regions', `${stats.regions} serving${states.length > 0 ? `, ${states.join(', ')}` : ''}`]);
  if (stats.merger) {
    const g = stats.merger;
    rows.push([
      'merger',
      `${g.pagesSharing} pages saved by sharing ${g.pagesShared} frames, ${g.zeroPages} zero pages, ${g.fullScans} full scans`,
    ]);
  } else if (stats.merger === null) {
    rows.push(['merger', 'off']);
  }
  if (stats.nbd) {
    const n = stats.nbd;
    const requests = Object.values(n.requests).reduce((a, b) => a + b, 0);
    rows.push(
      ['nbd', `${n.connectionsOpen} connections open (${n.connectionsTotal} since start)`],
      [
        'traffic',
        `${requests} requests: ${formatSize(n.bytesRead)} read, ${formatSize(n.bytesWritten)} written, ${n.errors} errors`,
      ],
    );
  }
  const width = Math.max(...rows.map(([label]) => label.length));
  return rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`).join('\n');
}
