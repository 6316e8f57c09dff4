/**
 * Region migration between two appliances (issue 10, on the pre-copy engine): a region full of
 * data moves from A to B while a writer, a real NBD client on A, dirties random pages at a
 * fixed rate (50 MB/s, then 200 MB/s). The baseline is stop-and-copy of the same region in the
 * same run: the same migration with no writer, whose whole copy (round 1) plus blackout is what
 * a migration that stopped the writes first would have cost them.
 *
 *   blackout (downtime), ms, and the migration's total time · bytes sent ÷ region size ·
 *   the writer's throughput during the migration ÷ before it
 *
 * A and B are appliance processes (`memfabric appliance`, stopped by PID); the writer is this
 * process, so A's one thread serves the writer's requests and the copy, as it would in use.
 * Each figure is the median over the repeats, ours and the baseline interleaved.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationStatus } from '../src/appliance/migration.js';
import { NbdClient } from '../src/nbd/index.js';
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
/** The writer's requests in flight at most, and how long it runs alone before the migration. */
const WRITER_QD = 8;
const WRITER_ALONE_MS = 500;
/** Status polls while waiting for a migration (every POLL_MS). */
const POLL_MS = 2;
const POLLS_MAX = 60_000;

interface Run {
  status: MigrationStatus;
  /** Bytes per second the writer had acknowledged before the migration, and during it. */
  writerBefore: number;
  writerDuring: number;
}

/** An admin call (A and B share one token file, so one token reaches both). */
async function admin(
  appliance: ApplianceProcess,
  method: string,
  path: string,
  body?: unknown,
): Promise<Response> {
  return fetch(appliance.httpUrl + path, {
    method,
    headers: {
      authorization: `Bearer ${appliance.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
}

async function poll(appliance: ApplianceProcess, name: string): Promise<MigrationStatus> {
  for (let i = 0; i < POLLS_MAX; i++) {
    const answer = await admin(appliance, 'GET', `/v1/regions/${name}/migration`);
    const status = (await answer.json()) as MigrationStatus;
    if (status.state === 'done' || status.state === 'failed') return status;
    await sleep(POLL_MS);
  }
  throw new Error(`migration of ${name} did not finish`);
}

/**
 * Creates region `name` on A full of data and migrates it to B, with a writer at
 * `bytesPerSec` (0: none) over its random pages, up to WRITER_QD requests in flight, that
 * stops at its first refusal (the blackout) or closed connection.
 */
async function migrateOnce(
  a: ApplianceProcess,
  b: ApplianceProcess,
  name: string,
  size: number,
  bytesPerSec: number,
): Promise<Run> {
  const created = await admin(a, 'POST', '/v1/regions', { name, size });
  if (created.status !== 201) throw new Error(`create: ${created.status} ${await created.text()}`);
  // Every page holds data (random bytes, so none reads as zeros).
  const filler = await NbdClient.connect({ host: a.nbdHost, port: a.nbdPort, exportName: name });
  const fill = randomBytes(MiB);
  for (let at = 0; at < size; at += MiB) await filler.write(at, fill);
  await filler.disconnect();
  let acked = 0;
  let stopped = false;
  let writer: Promise<void> = Promise.resolve();
  if (bytesPerSec > 0) {
    const client = await NbdClient.connect({ host: a.nbdHost, port: a.nbdPort, exportName: name });
    const buffers = Array.from({ length: WRITER_QD }, (_, i) => Buffer.alloc(PAGE, i + 1));
    const free = buffers.map((_, i) => i);
    const started = performance.now();
    let issued = 0;
    let x = 12345;
    writer = (async () => {
      let inFlight = 0;
      let wake: (() => void) | undefined;
      while (!stopped) {
        const due = ((performance.now() - started) / 1000) * bytesPerSec;
        if (issued * PAGE >= due || free.length === 0) {
          if (free.length === 0) await new Promise<void>((resolve) => (wake = resolve));
          else await sleep(1);
          continue;
        }
        const slot = free.pop()!;
        x = (x * 1103515245 + 12345) >>> 0;
        const page = (x >>> 4) % (size / PAGE);
        issued++;
        inFlight++;
        client.write(page * PAGE, buffers[slot]!).then(
          () => {
            acked += PAGE;
            inFlight--;
            free.push(slot);
            wake?.();
          },
          () => {
            stopped = true;
            inFlight--;
            free.push(slot);
            wake?.();
          },
        );
      }
      while (inFlight > 0) await new Promise<void>((resolve) => (wake = resolve));
      client.destroy();
    })();
  }
  await sleep(bytesPerSec > 0 ? WRITER_ALONE_MS : 0);
  const before = acked;
  const beforeRate = (before / WRITER_ALONE_MS) * 1000;
  const migrationStarted = performance.now();
  const answer = await admin(a, 'POST', `/v1/regions/${name}/migrate`, {
    target: b.httpUrl,
    targetToken: b.token,
  });
  if (answer.status !== 202) throw new Error(`migrate: ${answer.status} ${await answer.text()}`);
  // The writer's rate during the migration: until its first refusal (the blackout) at the latest.
  let during = 0;
  const watching = (async () => {
    while (!stopped) await sleep(1);
    during = ((acked - before) / (performance.now() - migrationStarted)) * 1000;
  })();
  const status = await poll(a, name);
  stopped = true;
  await writer;
  await watching;
  if (status.state !== 'done') throw new Error(`migration failed: ${JSON.stringify(status.error)}`);
  await admin(b, 'DELETE', `/v1/regions/${name}`);
  await admin(a, 'DELETE', `/v1/regions/${name}`); // the forwarding record
  return { status, writerBefore: beforeRate, writerDuring: during };
}

export const regionMigrationSuite: Suite = {
  name: 'region-migration',
  async run(context: BenchContext): Promise<void> {
    const size = (context.quick ? 64 : 256) * MiB;
    const options = { memory: `${(size / MiB) * 2 + 64}MiB`, merge: false };
    const a = await ApplianceProcess.start(options);
    const b = await ApplianceProcess.start(options);
    try {
      let n = 0;
      for (const mbps of [50, 200]) {
        const live: Run[] = [];
        const still: Run[] = [];
        // One untimed pair warms up both paths.
        await migrateOnce(a, b, `w${n++}`, size, mbps * 1e6);
        await migrateOnce(a, b, `w${n++}`, size, 0);
        for (let i = 0; i < context.repeats; i++) {
          live.push(await migrateOnce(a, b, `r${n++}`, size, mbps * 1e6));
          still.push(await migrateOnce(a, b, `r${n++}`, size, 0));
        }
        const stopAndCopy = (run: Run) => run.status.rounds[0]!.ms + run.status.blackout!.ms;
        const total = (run: Run) => Date.parse(run.status.finishedAt!) - Date.parse(run.status.startedAt);
        const baselineDowntime = median(still.map(stopAndCopy));
        context.record({
          id: `region-migrate ${size / MiB} MiB, writer ${mbps} MB/s: blackout`,
          unit: 'ms',
          value: median(live.map((r) => r.status.blackout!.ms)),
          baseline: 'stop-and-copy of the same region (its whole copy)',
          baselineValue: baselineDowntime,
          higherIsBetter: false,
          goal: '≤ 30 ms, ≥ 20× shorter than stop-and-copy',
        });
        context.record({
          id: `region-migrate ${size / MiB} MiB, writer ${mbps} MB/s: total time`,
          unit: 'ms',
          value: median(live.map(total)),
          baseline: 'stop-and-copy of the same region',
          baselineValue: median(still.map(total)),
          higherIsBetter: false,
        });
        context.record({
          id: `region-migrate ${size / MiB} MiB, writer ${mbps} MB/s: bytes sent ÷ region size`,
          unit: '×',
          value: median(live.map((r) => r.status.bytesSent / size)),
          baseline: 'stop-and-copy of the same region',
          baselineValue: median(still.map((r) => r.status.bytesSent / size)),
          higherIsBetter: false,
          goal: '≤ 1.5×',
        });
        context.record({
          id: `region-migrate ${size / MiB} MiB, writer ${mbps} MB/s: writer throughput during`,
          unit: 'MB/s',
          value: median(live.map((r) => r.writerDuring / 1e6)),
          baseline: 'the same writer before the migration',
          baselineValue: median(live.map((r) => r.writerBefore / 1e6)),
          higherIsBetter: true,
        });
        for (const run of live) {
          const s = run.status;
          context.log(
            `${mbps} MB/s: ${s.rounds.length} rounds, stop ${s.stopReason}, expected ${s.expectedDowntimeMs} ms, ` +
              `blackout ${s.blackout!.pages} pages in ${s.blackout!.ms} ms, bandwidth ${Math.round(s.bandwidthBytesPerSec / MiB)} MiB/s, ` +
              `dirty rate ${Math.round(s.dirtyRateBytesPerSec / MiB)} MiB/s`,
          );
        }
      }
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  },
};
