/**
 * Prometheus metrics for one appliance (prom-client, a registry of its own). Values are read
 * from the appliance when scraped; nothing on the data path touches prom-client.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { Appliance } from './appliance.js';
import type { MigrationTotals } from './migration.js';

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

export function createMetrics(appliance: Appliance): Registry {
  const registry = new Registry();
  const stats = () => appliance.stats();
  const regions = () => appliance.registry.all();

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
    () => regions().map((r) => [{ region: r.name, tenant: r.tenant }, r.stats().residentBytes]),
  );
  mirroredGauge(
    registry,
    'memfabric_region_shared_bytes',
    'Bytes of pages shared with clones or merged, by region.',
    ['region', 'tenant'],
    () => regions().map((r) => [{ region: r.name, tenant: r.tenant }, r.stats().sharedBytes]),
  );
  mirroredCounter(
    registry,
    'memfabric_region_operations_total',
    'Data operations by region and kind.',
    ['region', 'op'],
    () =>
      regions().flatMap((r) => {
        const s = r.stats();
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
  mirroredCounter(registry, 'memfabric_nbd_errors_total', 'NBD requests answered with an error.', [], () => [
    [{}, stats().nbd.errors],
  ]);
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
