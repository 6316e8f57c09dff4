/**
 * `memfabric region …` and `memfabric stats`: thin clients of an appliance's admin API.
 */
import { adminRequest, type AdminBase } from '../appliance/admin-client.js';
import { formatSize } from '../size.js';
import { formatTable } from './table.js';

export const APPLIANCE_URL_DEFAULT = 'http://127.0.0.1:10880';

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
): Promise<RegionView> {
  return adminRequest<RegionView>(base, 'POST', '/v1/regions', {
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
