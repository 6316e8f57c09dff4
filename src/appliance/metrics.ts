/**
 * Prometheus metrics for one appliance (prom-client, a registry of its own: several appliances
 * may share a process). Values are read from the appliance when scraped; nothing on the data
 * path touches prom-client. A scrape takes the appliance's statistics once (they walk every
 * frame for the merger's counts) and every collector reads that one snapshot.
 *
 * Besides the memfabric_* lines: prom-client's default process and Node.js metrics, the NBD
 * latency histograms (kept by the NBD server in typed arrays, nbd/server/latency.ts, and turned
 * into Prometheus buckets here) and the admin API's latency histogram (observed by
 * request-log.ts).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { COMMAND_NAMES, LATENCY_BOUNDS_SECONDS } from '../nbd/index.js';
import type { Appliance, ApplianceStats } from './appliance.js';
import type { MigrationTotals } from './migration.js';
import type { Region, RegionStats } from './region.js';
import { MEMFABRIC_VERSION } from './version.js';

/** What one scrape reads: the appliance's statistics and each region's, taken once. */
interface Snapshot {
  stats: ApplianceStats;
  regions: Array<{ region: Region; stats: RegionStats }>;
}

/** Buckets of the admin API's latency histogram, in seconds. */
const HTTP_BUCKETS_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** A registry that takes one snapshot of the appliance per scrape. */
export class ApplianceMetrics extends Registry {
  private snapshot: Snapshot | undefined;
  private readonly http: Histogram<'method' | 'route' | 'status'>;

  constructor(private readonly appliance: Appliance) {
    super();
    this.http = new Histogram({
      name: 'memfabric_http_request_duration_seconds',
      help: 'Admin API requests: time from arrival to the response sent, by method, route pattern and status.',
      labelNames: ['method', 'route', 'status'],
      buckets: HTTP_BUCKETS_SECONDS,
      registers: [this],
    });
  }

  /** The statistics of the scrape under way (taken now outside a scrape). */
  current(): Snapshot {
    return this.snapshot ?? this.take();
  }

  override async metrics(): Promise<string> {
    // Every collector runs synchronously at the start of super.metrics(), so they all see this one.
    this.snapshot = this.take();
    try {
      return await super.metrics();
    } finally {
      this.snapshot = undefined;
    }
  }

  /** One admin request answered (request-log.ts). */
  observeHttp(method: string, route: string, status: number, seconds: number): void {
    this.http.observe({ method, route, status: String(status) }, seconds);
  }

  private take(): Snapshot {
    return {
      stats: this.appliance.stats(),
      regions: this.appliance.registry.all().map((region) => ({ region, stats: region.stats() })),
    };
  }
}

/**
 * A counter or gauge whose values are read from the appliance at scrape time (prom-client's
 * `collect` hook), so the data path never touches prom-client.
 */
function mirrored(
  kind: 'counter' | 'gauge',
  registry: Registry,
  name: string,
  help: string,
  labelNames: string[],
  read: () => Array<[Record<string, string>, number]>,
): void {
  const options = { name, help, labelNames, registers: [registry] };
  if (kind === 'counter') {
    new Counter({
      ...options,
      collect() {
        this.reset();
        for (const [labels, value] of read()) this.inc(labels, value);
      },
    });
  } else {
    new Gauge({
      ...options,
      collect() {
        this.reset();
        for (const [labels, value] of read()) this.set(labels, value);
      },
    });
  }
}

const mirroredCounter = mirrored.bind(null, 'counter');
const mirroredGauge = mirrored.bind(null, 'gauge');

export function createMetrics(appliance: Appliance): ApplianceMetrics {
  const registry = new ApplianceMetrics(appliance);
  const stats = () => registry.current().stats;
  /** Region statistics of this scrape, by region. */
  const regionStats = () => registry.current().regions;

  const refusals = appliance.adminAuth.refusals;
  mirroredCounter(
    registry,
    'memfabric_admin_refusals_total',
    'Admin API requests refused: no or a wrong token (unauthorized), a tenant token beyond its tenant (forbidden).',
    ['reason'],
    () => [
      [{ reason: 'unauthorized' }, refusals.unauthorized],
      [{ reason: 'forbidden' }, refusals.forbidden],
    ],
  );
  mirroredGauge(registry, 'memfabric_memory_capacity_bytes', 'Frame budget of the appliance.', [], () => [
    [{}, stats().memory.capacityBytes],
  ]);
  mirroredGauge(registry, 'memfabric_memory_used_bytes', 'Bytes of frames in use.', [], () => [
    [{}, stats().memory.usedBytes],
  ]);
  mirroredGauge(
    registry,
    'memfabric_memory_logical_bytes',
    'Bytes the regions hold before sharing.',
    [],
    () => [[{}, stats().memory.logicalBytes]],
  );
  mirroredGauge(registry, 'memfabric_regions', 'Regions on this appliance, by state.', ['state'], () =>
    Object.entries(stats().regionStates).map(([state, count]) => [{ state }, count]),
  );
  mirroredGauge(
    registry,
    'memfabric_region_resident_bytes',
    'Bytes of pages holding data, by region.',
    ['region', 'tenant'],
    () =>
      regionStats().map(({ region: r, stats: s }) => [{ region: r.name, tenant: r.tenant }, s.residentBytes]),
  );
  mirroredGauge(
    registry,
    'memfabric_region_shared_bytes',
    'Bytes of pages shared with clones or merged, by region.',
    ['region', 'tenant'],
    () =>
      regionStats().map(({ region: r, stats: s }) => [{ region: r.name, tenant: r.tenant }, s.sharedBytes]),
  );
  mirroredCounter(
    registry,
    'memfabric_region_operations_total',
    'Data operations by region and kind.',
    ['region', 'op'],
    () =>
      regionStats().flatMap(({ region: r, stats: s }) => {
        return [
          [{ region: r.name, op: 'read' }, s.reads],
          [{ region: r.name, op: 'write' }, s.writes],
          [{ region: r.name, op: 'trim' }, s.trims],
          [{ region: r.name, op: 'zero' }, s.zeroes],
          [{ region: r.name, op: 'flush' }, s.flushes],
        ] as Array<[Record<string, string>, number]>;
      }),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_pages',
    'Same-page merger page counts, as KSM reports them.',
    ['kind'],
    () => {
      const merger = stats().merger;
      if (!merger) return [];
      return [
        [{ kind: 'shared' }, merger.pagesShared],
        [{ kind: 'sharing' }, merger.pagesSharing],
        [{ kind: 'unshared' }, merger.pagesUnshared],
        [{ kind: 'volatile' }, merger.pagesVolatile],
        [{ kind: 'zero' }, merger.zeroPages],
      ];
    },
  );
  // Merger lines: what sharing saves (gross, and net of the merger's own tables, which is
  // negative while little is merged), and how far and how fast the scan goes.
  const merger = (read: (m: NonNullable<ReturnType<typeof stats>['merger']>) => number) => () => {
    const m = stats().merger;
    return m ? ([[{}, read(m)]] as Array<[Record<string, string>, number]>) : [];
  };
  mirroredGauge(
    registry,
    'memfabric_merger_saved_bytes',
    'Bytes saved by merged and zero pages, gross: (sharing + zero pages) x page size. Never negative.',
    [],
    merger((m) => m.bytesSaved),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_saved_net_bytes',
    "Bytes saved net of the merger's own tables; negative while they cost more than sharing saves.",
    [],
    merger((m) => m.bytesSavedNet),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_metadata_bytes',
    "Bytes of the merger's own tables (hashes, chains, content indexes).",
    [],
    merger((m) => m.metadataBytes),
  );
  mirroredCounter(
    registry,
    'memfabric_merger_full_scans_total',
    'Completed full scans.',
    [],
    merger((m) => m.fullScans),
  );
  mirroredCounter(
    registry,
    'memfabric_merger_pages_visited_total',
    'Resident pages the scan visited, merged already or not.',
    [],
    merger((m) => m.pagesVisited),
  );
  mirroredCounter(
    registry,
    'memfabric_merger_scan_seconds_total',
    'Time spent scanning (its rate is the share of a core the merger uses).',
    [],
    merger((m) => m.scanMs / 1000),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_pages_visited_per_second',
    'Resident pages visited per second over the last 5 to 10 s.',
    [],
    merger((m) => m.pagesVisitedPerSecond),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_scan_fraction',
    'How far the current full scan is, 0 to 1 (by address, over the spaces it covers).',
    [],
    merger((m) => m.scanFraction),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_last_full_scan_seconds',
    'Wall time the last complete full scan took.',
    [],
    merger((m) => m.lastFullScanMs / 1000),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_cpu_share',
    'Share of one core the merger used over the last 5 to 10 s.',
    [],
    merger((m) => m.cpuShare),
  );
  mirroredGauge(
    registry,
    'memfabric_merger_cpu_share_target',
    'Share of one core the merger is set to use (--merge-cpu).',
    [],
    merger((m) => m.cpuShareTarget),
  );
  mirroredGauge(registry, 'memfabric_nbd_connections', 'Open NBD connections.', [], () => [
    [{}, stats().nbd.connectionsOpen],
  ]);
  mirroredCounter(registry, 'memfabric_nbd_requests_total', 'NBD requests by command.', ['command'], () =>
    Object.entries(stats().nbd.requests).map(([command, count]) => [{ command }, count]),
  );
  mirroredCounter(registry, 'memfabric_nbd_bytes_total', 'NBD payload bytes.', ['direction'], () => {
    const nbd = stats().nbd;
    return [
      [{ direction: 'read' }, nbd.bytesRead],
      [{ direction: 'write' }, nbd.bytesWritten],
    ];
  });
  mirroredCounter(
    registry,
    'memfabric_nbd_protocol_violations_total',
    'Connections dropped for breaking the protocol.',
    [],
    () => [[{}, stats().nbd.protocolViolations]],
  );
  mirroredCounter(
    registry,
    'memfabric_nbd_connections_refused_total',
    'NBD connections refused at accept because the connection limit was reached.',
    [],
    () => [[{}, stats().nbd.connectionsRefused]],
  );
  mirroredCounter(
    registry,
    'memfabric_nbd_timeouts_total',
    'NBD connections closed by a timeout, by kind.',
    ['kind'],
    () => {
      const nbd = stats().nbd;
      return [
        [{ kind: 'handshake' }, nbd.handshakeTimeouts],
        [{ kind: 'idle' }, nbd.idleTimeouts],
        [{ kind: 'payload_stall' }, nbd.payloadStalls],
        [{ kind: 'reply_stall' }, nbd.replyStalls],
      ];
    },
  );
  mirroredCounter(
    registry,
    'memfabric_nbd_list_refusals_total',
    'NBD_OPT_LIST options refused past the per-connection limit.',
    [],
    () => [[{}, stats().nbd.listRefusals]],
  );
  mirroredCounter(
    registry,
    'memfabric_nbd_backpressure_total',
    'Times NBD reading stopped: a connection with too many unread replies, or a request waiting for the buffer budget.',
    ['kind'],
    () => {
      const nbd = stats().nbd;
      return [
        [{ kind: 'reply_queue' }, nbd.replyPauses],
        [{ kind: 'buffer_budget' }, nbd.budgetWaits],
      ];
    },
  );
  mirroredGauge(
    registry,
    'memfabric_nbd_buffer_bytes',
    'NBD global buffer budget: bytes held (queued replies, write payloads) and its capacity.',
    ['kind'],
    () => {
      const nbd = stats().nbd;
      return [
        [{ kind: 'used' }, nbd.bufferBytesUsed],
        [{ kind: 'max' }, nbd.bufferBytesMax],
      ];
    },
  );
  addOperatorMetrics(registry, appliance, stats, regionStats);
  return registry;
}

/**
 * Region migrations (migration.ts), read from the migration manager at scrape time: those under
 * way, how they ended, what they sent, and the last blackout.
 */
export function registerMigrationMetrics(registry: Registry, read: () => MigrationTotals): void {
  mirroredGauge(
    registry,
    'memfabric_migration_in_progress',
    'Region migrations from this appliance under way.',
    [],
    () => [[{}, read().inProgress]],
  );
  mirroredCounter(
    registry,
    'memfabric_migration_finished_total',
    'Region migrations from this appliance that ended, by outcome.',
    ['outcome'],
    () => {
      const totals = read();
      return [
        [{ outcome: 'done' }, totals.done],
        [{ outcome: 'failed' }, totals.failed],
      ];
    },
  );
  mirroredCounter(
    registry,
    'memfabric_migration_pages_sent_total',
    'Pages region migrations sent to their targets (data, zero and trimmed pages; every round and blackout).',
    [],
    () => [[{}, read().pagesSent]],
  );
  mirroredCounter(
    registry,
    'memfabric_migration_bytes_sent_total',
    'Bytes region migrations put on the wire to their targets (NBD request headers and data).',
    [],
    () => [[{}, read().bytesSent]],
  );
  mirroredCounter(
    registry,
    'memfabric_migration_rounds_total',
    'Pre-copy rounds region migrations completed.',
    [],
    () => [[{}, read().rounds]],
  );
  mirroredGauge(
    registry,
    'memfabric_migration_last_blackout_ms',
    'The measured blackout of the last region migration that completed, ms (0 before the first).',
    [],
    () => [[{}, read().lastBlackoutMs ?? 0]],
  );
}
// ---- operator's view: process, build, latency, errors by errno, bytes by region and tenant,
// rebuilds. (Kept apart from the lines above so other blocks merge without touching it.)

function addOperatorMetrics(
  registry: ApplianceMetrics,
  appliance: Appliance,
  stats: () => ApplianceStats,
  regionStats: () => Snapshot['regions'],
): void {
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'memfabric_build_info',
    help: 'Always 1; the labels say which memfabric and which Node.js run this appliance.',
    labelNames: ['version', 'node'],
    registers: [registry],
  }).set({ version: MEMFABRIC_VERSION, node: process.version }, 1);
  mirroredGauge(
    registry,
    'memfabric_start_time_seconds',
    'When this appliance started, in seconds since the Unix epoch (uptime: time() minus this).',
    [],
    () => [[{}, appliance.startedAt / 1000]],
  );
  registry.registerMetric(nbdLatencyHistogram(appliance) as never);
  mirroredCounter(
    registry,
    'memfabric_nbd_errors_total',
    'NBD requests answered with an error, by errno (ENOSPC: the appliance is full; EPERM: read-only; EINVAL: a bad request; ESHUTDOWN: the region migrates; EIO: anything else).',
    ['errno'],
    () => Object.entries(stats().nbd.errorsByErrno).map(([errno, count]) => [{ errno }, count]),
  );
  mirroredCounter(
    registry,
    'memfabric_region_bytes_total',
    'Bytes read and written by region (NBD and the chunk API; zeroing counts as written).',
    ['region', 'tenant', 'direction'],
    () =>
      regionStats().flatMap(({ region: r, stats: s }) => [
        [{ region: r.name, tenant: r.tenant, direction: 'read' }, s.bytesRead] as [
          Record<string, string>,
          number,
        ],
        [{ region: r.name, tenant: r.tenant, direction: 'write' }, s.bytesWritten],
      ]),
  );
  mirroredCounter(
    registry,
    'memfabric_tenant_bytes_total',
    "Bytes read and written by tenant: the sum over the tenant's regions that exist now.",
    ['tenant', 'direction'],
    () =>
      [...tenantTotals(regionStats()).entries()].flatMap(([tenant, t]) => [
        [{ tenant, direction: 'read' }, t.bytesRead] as [Record<string, string>, number],
        [{ tenant, direction: 'write' }, t.bytesWritten],
      ]),
  );
  mirroredGauge(
    registry,
    'memfabric_tenant_resident_bytes',
    "Bytes of pages holding data in the tenant's regions (before sharing).",
    ['tenant'],
    () => [...tenantTotals(regionStats()).entries()].map(([tenant, t]) => [{ tenant }, t.residentBytes]),
  );
  mirroredGauge(registry, 'memfabric_tenant_regions', 'Regions that serve, by tenant.', ['tenant'], () =>
    [...tenantTotals(regionStats()).entries()].map(([tenant, t]) => [{ tenant }, t.regions]),
  );
  // Rebuilds run where the fleet controller leads (fleet mode); elsewhere these are absent.
  const rebuilds = () => appliance.controller?.status();
  mirroredGauge(
    registry,
    'memfabric_rebuilds',
    'Fabric region rebuilds this appliance leads, by state (in_progress, queued, failed: waiting to be retried or given up).',
    ['state'],
    () => {
      const status = rebuilds();
      if (!status) return [];
      return [
        [{ state: 'in_progress' }, status.inProgress.length],
        [{ state: 'queued' }, status.queue.length],
        [{ state: 'failed' }, status.failed.length],
      ];
    },
  );
  mirroredGauge(
    registry,
    'memfabric_rebuild_bytes',
    'Bytes of each rebuild in progress: done so far and total.',
    ['tenant', 'region', 'kind'],
    () =>
      (rebuilds()?.inProgress ?? []).flatMap((p) => [
        [{ tenant: p.tenant, region: p.name, kind: 'done' }, p.bytesDone] as [Record<string, string>, number],
        [{ tenant: p.tenant, region: p.name, kind: 'total' }, p.bytesTotal],
      ]),
  );
}

export interface TenantTotals {
  regions: number;
  bytesRead: number;
  bytesWritten: number;
  residentBytes: number;
  reads: number;
  writes: number;
}

/** Per-tenant sums of region statistics (also the dashboard's tenant table). */
export function tenantTotals(regions: Snapshot['regions']): Map<string, TenantTotals> {
  const totals = new Map<string, TenantTotals>();
  for (const { region, stats } of regions) {
    let t = totals.get(region.tenant);
    if (!t) {
      t = { regions: 0, bytesRead: 0, bytesWritten: 0, residentBytes: 0, reads: 0, writes: 0 };
      totals.set(region.tenant, t);
    }
    t.regions++;
    t.bytesRead += stats.bytesRead;
    t.bytesWritten += stats.bytesWritten;
    t.residentBytes += stats.residentBytes;
    t.reads += stats.reads;
    t.writes += stats.writes;
  }
  return totals;
}

/**
 * memfabric_nbd_request_duration_seconds as a prom-client metric object: the NBD server keeps
 * the counts (per bucket, not cumulative) and this turns them into cumulative buckets at scrape
 * time. DISC is never answered, so it has no series.
 */
function nbdLatencyHistogram(appliance: Appliance): object {
  const name = 'memfabric_nbd_request_duration_seconds';
  const help =
    'NBD requests by command: time from the request header parsed to the reply queued (a WRITE includes receiving its payload; FLUSH and FUA writes their flush).';
  return {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    get() {
      const latency = appliance.nbdServer.latency;
      const values: Array<{ metricName: string; labels: Record<string, string | number>; value: number }> =
        [];
      COMMAND_NAMES.forEach((command, type) => {
        if (command === 'disc') return;
        const buckets = latency.bucketsOf(type);
        let cumulative = 0;
        buckets.forEach((count, i) => {
          cumulative += count;
          const le = i < LATENCY_BOUNDS_SECONDS.length ? LATENCY_BOUNDS_SECONDS[i]! : '+Inf';
          values.push({ metricName: `${name}_bucket`, labels: { command, le }, value: cumulative });
        });
        values.push({ metricName: `${name}_sum`, labels: { command }, value: latency.sumsMs[type]! / 1000 });
        values.push({ metricName: `${name}_count`, labels: { command }, value: cumulative });
      });
      return { name, help, type: 'histogram', values, aggregator: 'sum' };
    },
  };
}
