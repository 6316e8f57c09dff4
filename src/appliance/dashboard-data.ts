/**
 * GET /v1/dashboard: everything the live dashboard shows, in one JSON answer, so the page makes
 * one request per refresh. Counters are cumulative (reads, bytes, latency bucket counts); the
 * page turns them into rates (IOPS, MB/s) and windowed percentiles by differencing successive
 * answers, so the appliance keeps no per-viewer state.
 */
import { COMMAND_NAMES, LATENCY_BOUNDS_SECONDS } from '../nbd/index.js';
import type { Appliance, ApplianceStats } from './appliance.js';
import { tenantTotals, type TenantTotals } from './metrics.js';
import { MEMFABRIC_VERSION } from './version.js';

export interface DashboardRegion {
  name: string;
  tenant: string | null;
  size: number | null;
  /** ready, or (file-backed regions found at start) loading, failed, corrupt. */
  state: string;
  error: string | null;
  readOnly: boolean | null;
  default: boolean;
  clonedFrom: string | null;
  connections: number;
  /** Operations: reads + writes + trims + zeroes + flushes (the page's IOPS). */
  ops: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  residentBytes: number;
  sharedBytes: number;
  migrating: boolean;
  /** File-backed regions: whether a save runs, when the last ended, why it failed; else null. */
  save: { saving: boolean; lastSavedAt: number | null; lastError: string | null } | null;
  /** What a user pastes to reach it. */
  uri: string;
}

export interface DashboardView {
  version: string;
  node: string;
  /** When the appliance started and when this answer was made (ms since the epoch). */
  startedAt: number;
  now: number;
  nbdEndpoint: { host: string; port: number };
  memory: ApplianceStats['memory'];
  merger: ApplianceStats['merger'];
  nbd: {
    connectionsOpen: number;
    /** NBD requests answered (every command but DISC). */
    requests: number;
    bytesRead: number;
    bytesWritten: number;
    errors: number;
    errorsByErrno: Record<string, number>;
  };
  /** Per-bucket (not cumulative) counts of all NBD commands together; bounds in seconds, the last bucket +Inf. */
  latency: { boundsSeconds: readonly number[]; counts: number[] };
  regions: DashboardRegion[];
  tenants: Array<{ tenant: string } & TenantTotals>;
  /** Rebuilds this appliance leads (fleet mode), or null. */
  rebuilds: {
    inProgress: Array<{ tenant: string; name: string; bytesDone: number; bytesTotal: number; rate: number }>;
    queued: number;
    failed: number;
  } | null;
}

export function dashboardView(appliance: Appliance): DashboardView {
  const stats = appliance.stats();
  const registry = appliance.registry;
  const { host, port } = appliance.nbdAddress;
  const uri = (name: string): string => `nbd://${host.includes(':') ? `[${host}]` : host}:${port}/${name}`;
  const regionStats = registry.all().map((region) => ({ region, stats: region.stats() }));
  const regions: DashboardRegion[] = regionStats.map(({ region, stats: s }) => ({
    name: region.name,
    tenant: region.tenant,
    size: region.size,
    state: 'ready',
    error: null,
    readOnly: region.readOnly,
    default: region.name === registry.defaultRegion,
    clonedFrom: region.clonedFrom,
    connections: s.connections,
    ops: s.reads + s.writes + s.trims + s.zeroes + s.flushes,
    reads: s.reads,
    writes: s.writes,
    bytesRead: s.bytesRead,
    bytesWritten: s.bytesWritten,
    residentBytes: s.residentBytes,
    sharedBytes: s.sharedBytes,
    migrating: region.migrating,
    save: region.backing
      ? {
          saving: region.backing.saving,
          lastSavedAt: region.backing.lastSavedAt,
          lastError: region.backing.lastSaveError,
        }
      : null,
    uri: uri(region.name),
  }));
  for (const pending of registry.pendingRegions()) {
    regions.push({
      name: pending.name,
      tenant: pending.tenant,
      size: pending.size,
      state: pending.state,
      error: pending.error?.message ?? null,
      readOnly: pending.readOnly,
      default: pending.name === registry.defaultRegion,
      clonedFrom: null,
      connections: 0,
      ops: 0,
      reads: 0,
      writes: 0,
      bytesRead: 0,
      bytesWritten: 0,
      residentBytes: 0,
      sharedBytes: 0,
      migrating: false,
      save: null,
      uri: uri(pending.name),
    });
  }
  regions.sort((a, b) => a.name.localeCompare(b.name));

  // All commands together: the page shows one latency, not one per command.
  const latency = appliance.nbdServer.latency;
  const counts = new Array<number>(LATENCY_BOUNDS_SECONDS.length + 1).fill(0);
  COMMAND_NAMES.forEach((_name, type) => {
    latency.bucketsOf(type).forEach((count, i) => (counts[i]! += count));
  });
  const requests = Object.entries(stats.nbd.requests).reduce(
    (sum, [command, count]) => (command === 'disc' ? sum : sum + count),
    0,
  );
  const status = appliance.controller?.status();
  return {
    version: MEMFABRIC_VERSION,
    node: process.version,
    startedAt: appliance.startedAt,
    now: Date.now(),
    nbdEndpoint: { host, port },
    memory: stats.memory,
    merger: stats.merger,
    nbd: {
      connectionsOpen: stats.nbd.connectionsOpen,
      requests,
      bytesRead: stats.nbd.bytesRead,
      bytesWritten: stats.nbd.bytesWritten,
      errors: stats.nbd.errors,
      errorsByErrno: stats.nbd.errorsByErrno,
    },
    latency: { boundsSeconds: LATENCY_BOUNDS_SECONDS, counts },
    regions,
    tenants: [...tenantTotals(regionStats).entries()]
      .map(([tenant, totals]) => ({ tenant, ...totals }))
      .sort((a, b) => a.tenant.localeCompare(b.tenant)),
    rebuilds: status
      ? {
          inProgress: status.inProgress.map((p) => ({
            tenant: p.tenant,
            name: p.name,
            bytesDone: p.bytesDone,
            bytesTotal: p.bytesTotal,
            rate: p.rate,
          })),
          queued: status.queue.length,
          failed: status.failed.length,
        }
      : null,
  };
}
