/**
 * Live migration of an address space to another process (issue 10, "Benchmarks"), each figure
 * beside a baseline from the same run:
 *
 *   A space of 1 GiB (quick: 128 MiB), every page holding data, migrated over TCP on 127.0.0.1
 *   to a receiver process (bench/migrate-receiver.ts), while a writer in this process dirties
 *   random whole pages at a paced 50 MB/s, then at 200 MB/s (an async writer: it awaits
 *   migration.writable() each turn, so auto-converge can slow it).
 *   - blackout: gate closed to handover acknowledged, vs stop-and-copy of the same space (the
 *     writer stopped, the whole space sent: all of it is downtime);
 *   - total time, vs stop-and-copy's;
 *   - bytes sent ÷ the space's size, vs stop-and-copy's;
 *   - the writer's throughput during the migration ÷ before it (the same pacing, no migration).
 * Goals (issue 10): blackout ≤ 30 ms at 50 MB/s and ≥ 20× shorter than stop-and-copy; bytes
 * ≤ 1.5× the space; at 200 MB/s convergence (auto-converge) with a blackout ≤ 30 ms.
 *
 * Runs alone too: `node --import tsx bench/migrate.bench.ts [--quick]`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { AddressSpace, FramePool } from '../src/memory/index.js';
import { migrateSpace, type Migration, type SpaceMigrationReport } from '../src/migrate/index.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

interface Receiver {
  child: ChildProcess;
  port: number;
  next(): Promise<Record<string, unknown>>;
}

async function startReceiver(): Promise<Receiver> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'bench/migrate-receiver.ts'], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const queue: Record<string, unknown>[] = [];
  const waiting: ((line: Record<string, unknown>) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    const line = JSON.parse(text) as Record<string, unknown>;
    const waiter = waiting.shift();
    if (waiter) waiter(line);
    else queue.push(line);
  });
  const next = (): Promise<Record<string, unknown>> =>
    new Promise((resolve) => {
      const line = queue.shift();
      if (line !== undefined) resolve(line);
      else waiting.push(resolve);
    });
  const { port } = (await next()) as { port: number };
  return { child, port, next };
}

/**
 * A writer dirtying random whole pages at `bytesPerSec`, paced against the clock, in turns of
 * at most TURN_PAGES pages with a yield between (and `await migration.writable()` while one
 * runs). Returns the bytes it wrote when stopped.
 */
class Writer {
  private stopped = false;
  private written = 0;
  private x = 0x1234567;
  private readonly done: Promise<void>;
  private readonly started = performance.now();
  migration: Migration | undefined;

  constructor(
    private readonly space: AddressSpace,
    private readonly bytesPerSec: number,
  ) {
    this.done = this.run();
  }

  async stop(): Promise<{ bytes: number; seconds: number }> {
    this.stopped = true;
    await this.done;
    return { bytes: this.written, seconds: (performance.now() - this.started) / 1000 };
  }

  private async run(): Promise<void> {
    const page = new Uint8Array(PAGE).fill(0xa5);
    const pages = this.space.pages;
    while (!this.stopped) {
      if (this.migration) {
        try {
          await this.migration.writable();
        } catch {
          return; // moved
        }
      }
      const due = ((performance.now() - this.started) / 1000) * this.bytesPerSec;
      let turn = 0;
      while (this.written + PAGE <= due && turn < 64) {
        this.x ^= this.x << 13;
        this.x ^= this.x >>> 17;
        this.x ^= this.x << 5;
        const p = (this.x >>> 0) % pages;
        page[0] = this.x & 0xff;
        try {
          this.space.write(p * PAGE, page);
        } catch {
          break; // the blackout: try again next turn
        }
        this.written += PAGE;
        turn++;
      }
      await yieldNow();
    }
  }
}

/** A space of `bytes`, every page holding data, in `pool` (one pool for the whole suite: 1 GiB each time would wait for the GC). */
function filledSpace(pool: FramePool, bytes: number): AddressSpace {
  const space = new AddressSpace(pool, { size: bytes });
  const chunk = new Uint8Array(4 * MiB);
  for (let i = 0; i < chunk.length; i += 8) chunk[i] = (i >>> 3) & 0xff || 1;
  for (let at = 0; at < bytes; at += chunk.length)
    space.write(at, chunk.subarray(0, Math.min(chunk.length, bytes - at)));
  return space;
}

async function migrate(
  space: AddressSpace,
  receiver: Receiver,
  rate: number | undefined,
): Promise<{
  report: SpaceMigrationReport;
  writerRatio: number;
}> {
  let writerBefore = 0;
  let writer: Writer | undefined;
  if (rate !== undefined) {
    // The writer's throughput with no migration, then the same writer during one.
    const before = new Writer(space, rate);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const b = await before.stop();
    writerBefore = b.bytes / b.seconds;
    writer = new Writer(space, rate);
  }
  const migration = migrateSpace(space, { host: '127.0.0.1', port: receiver.port });
  if (writer) writer.migration = migration;
  const report = await migration.done;
  const during = writer ? await writer.stop() : undefined;
  await receiver.next();
  return { report, writerRatio: during ? during.bytes / during.seconds / writerBefore : 1 };
}

export const migrateSuite: Suite = {
  name: 'migrate',
  async run(context: BenchContext): Promise<void> {
    const bytes = context.quick ? 128 * MiB : 1024 * MiB;
    const label = context.quick ? '128MiB' : '1GiB';
    const runs = context.quick ? 1 : 3;
    const receiver = await startReceiver();
    const pool = new FramePool({ pageSize: PAGE, capacity: bytes + 64 * PAGE });
    try {
      const baseline: { blackout: number[]; bytes: number[] } = { blackout: [], bytes: [] };
      const results = new Map<
        number,
        {
          blackout: number[];
          total: number[];
          bytes: number[];
          writer: number[];
          rounds: number[];
          throttled: number[];
        }
      >();
      for (let run = 0; run < runs; run++) {
        // Stop-and-copy: the writer stopped, everything sent inside the downtime.
        const still = filledSpace(pool, bytes);
        const started = performance.now();
        const { report } = await migrate(still, receiver, undefined);
        baseline.blackout.push(performance.now() - started);
        baseline.bytes.push(report.bytesSent / bytes);
        still.destroy();
        for (const rate of [50, 200]) {
          const space = filledSpace(pool, bytes);
          const { report: live, writerRatio } = await migrate(space, receiver, rate * 1e6);
          const entry = results.get(rate) ?? {
            blackout: [],
            total: [],
            bytes: [],
            writer: [],
            rounds: [],
            throttled: [],
          };
          entry.blackout.push(live.downtimeMs);
          entry.total.push(live.totalMs);
          entry.bytes.push(live.bytesSent / bytes);
          entry.writer.push(writerRatio);
          entry.rounds.push(live.rounds.length);
          entry.throttled.push(live.throttle.delayMs);
          results.set(rate, entry);
          context.log(
            `${rate} MB/s run ${run}: ${live.rounds.length} rounds, stop ${live.stopReason}, blackout ${live.downtimeMs.toFixed(2)} ms (expected ${live.expectedDowntimeMs.toFixed(2)}), ` +
              `${live.blackoutPages} pages in it, bandwidth ${(live.bandwidthBytesPerSec / 1e6).toFixed(0)} MB/s, dirty ${(live.dirtyRateBytesPerSec / 1e6).toFixed(0)} MB/s, ` +
              `throttle max ${live.throttle.levelMax}, writers delayed ${live.throttle.delayMs.toFixed(1)} ms`,
          );
          space.destroy();
        }
        await yieldNow();
      }
      const stopCopyMs = median(baseline.blackout);
      for (const [rate, entry] of results) {
        context.record({
          id: `migrate.blackout.${label}.${rate}MBps`,
          unit: 'ms',
          value: median(entry.blackout),
          baseline: 'stop-and-copy downtime',
          baselineValue: stopCopyMs,
          higherIsBetter: false,
          goal: rate === 50 ? '≤ 30 ms, ≥ 20× shorter' : '≤ 30 ms (auto-converge)',
        });
        context.record({
          id: `migrate.total.${label}.${rate}MBps`,
          unit: 'ms',
          value: median(entry.total),
          baseline: 'stop-and-copy total',
          baselineValue: stopCopyMs,
          higherIsBetter: false,
        });
        context.record({
          id: `migrate.bytes-per-space.${label}.${rate}MBps`,
          unit: 'x',
          value: median(entry.bytes),
          baseline: 'stop-and-copy bytes/space',
          baselineValue: median(baseline.bytes),
          higherIsBetter: false,
          goal: '≤ 1.5×',
        });
        context.record({
          id: `migrate.writer-throughput.${label}.${rate}MBps`,
          unit: 'x',
          value: median(entry.writer),
          baseline: 'writer before migrating',
          baselineValue: 1,
          higherIsBetter: true,
        });
      }
    } finally {
      receiver.child.kill('SIGKILL');
    }
  },
};

if (import.meta.url === `file://${process.argv[1]}`) {
  const quick = process.argv.includes('--quick');
  await migrateSuite.run({
    quick,
    repeats: 1,
    record: (row) =>
      console.log(
        `${row.id}: ${row.value.toFixed(3)} ${row.unit} (baseline ${row.baseline} ${row.baselineValue.toFixed(3)})`,
      ),
    log: (message) => console.log(`  ${message}`),
  });
}
