/**
 * Lockstep standby (issue 10): the primary runs in this process, the standby in another
 * (standby-child.ts), over loopback TCP.
 *
 * - The primary's write throughput with 25 ms epochs ÷ the same writer without a standby,
 *   interleaved, for random 4 KiB page writes and random 256-byte record writes over a 256 MiB
 *   space (the writer yields to the event loop every 64 writes, with or without a standby).
 * - Epoch size, epoch latency (cut → ack) and the primary's pause per cut, from stats().
 * - durable() latency p50/p99 after one record write, beside a loopback TCP round trip to the
 *   same process (the floor); and durable() waiting for the 25 ms tick instead of cutting at
 *   once.
 * - Failover: SIGKILL of a primary process → the standby activated, beside SIGKILL → a plain
 *   socket to the dead process noticing (the floor any detection has).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { AddressSpace, FramePool } from '../src/index.js';
import { replicate, type ReplicaStats } from '../src/migrate/replica.js';
import { median, percentile, type BenchContext, type Suite } from './harness.js';

const CHILD = new URL('./standby-child.ts', import.meta.url).pathname;
const PAGE = 4096;

interface Child {
  process: ChildProcess;
  /** Resolves when the process has exited (made at spawn: the event may come before anyone waits). */
  exited: Promise<void>;
  next: (predicate: (line: Record<string, number>) => boolean) => Promise<Record<string, number>>;
}

function startChild(job: unknown): Child {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(job)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines: Record<string, number>[] = [];
  const waiting: Array<{
    predicate: (line: Record<string, number>) => boolean;
    resolve: (line: Record<string, number>) => void;
  }> = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    // Stamped on arrival, in this process's clock: processes' clocks are not compared.
    const line = { ...(JSON.parse(text) as Record<string, number>), arrived: performance.now() };
    const at = waiting.findIndex((w) => w.predicate(line));
    if (at >= 0) waiting.splice(at, 1)[0]!.resolve(line);
    else lines.push(line);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    process: child,
    exited,
    next(predicate) {
      const at = lines.findIndex(predicate);
      if (at >= 0) return Promise.resolve(lines.splice(at, 1)[0]!);
      return new Promise((resolve) => waiting.push({ predicate, resolve }));
    },
  };
}

/**
 * A server-like primary for `ms`: it dirties random pages of the space at `dirtyRate` bytes/s
 * (the state it changes) and, in between, does its work: 256-byte record writes into a hot
 * set of 64 pages, as many as it can, yielding to the event loop every 256. Returns records
 * per second (the work it got done) and per second of this process's CPU time: on this shared
 * 2-core machine the standby process takes CPU from the primary, which a standby on its own
 * machine would not, so the second figure is the primary's own slowdown.
 */
async function serve(
  space: AddressSpace,
  dirtyRate: number,
  ms: number,
  seed: number,
): Promise<{ perSecond: number; perCpuSecond: number }> {
  const page = Buffer.alloc(PAGE, seed & 0xff);
  const record = Buffer.alloc(256, seed & 0xff);
  let x = seed >>> 0 || 1;
  let dirtied = 0;
  let records = 0;
  const cpu = process.cpuUsage();
  const start = performance.now();
  const end = start + ms;
  for (let now = start; now < end; now = performance.now()) {
    const due = Math.floor((((now - start) / 1000) * dirtyRate) / PAGE);
    for (; dirtied < due; dirtied++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      space.write((x % space.pages) * PAGE, page);
    }
    for (let i = 0; i < 256; i++) {
      space.write(((records + i) % (64 * 16)) * 256, record);
    }
    records += 256;
    await new Promise((resolve) => setImmediate(resolve));
  }
  const used = process.cpuUsage(cpu);
  return {
    perSecond: (records / (performance.now() - start)) * 1000,
    perCpuSecond: (records / (used.user + used.system)) * 1e6,
  };
}

async function echoRoundTrips(port: number, count: number): Promise<number[]> {
  const socket: Socket = connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  await once(socket, 'connect');
  const out: number[] = [];
  const probe = Buffer.alloc(16, 1);
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    socket.write(probe);
    await once(socket, 'data');
    out.push(performance.now() - start);
  }
  socket.destroy();
  return out;
}

export const standbySuite: Suite = {
  name: 'standby',
  async run(context: BenchContext): Promise<void> {
    const standby = startChild({ role: 'standby' });
    const { port, echoPort } = await standby.next((line) => line.port !== undefined);
    try {
      const pages = 65536; // 256 MiB
      const space = new AddressSpace(new FramePool({ capacity: pages * PAGE, pageSize: PAGE }), {
        size: pages * PAGE,
      });
      space.write(0, Buffer.alloc(pages * PAGE, 1));
      const runMs = context.quick ? 1000 : 2000;

      // ---- the primary's work with 25 ms epochs ÷ without, at two rates of dirtying
      for (const rate of [50e6, 200e6]) {
        const ours: Array<{ perSecond: number; perCpuSecond: number }> = [];
        const base: Array<{ perSecond: number; perCpuSecond: number }> = [];
        let last: ReplicaStats | undefined;
        for (let r = 0; r < context.repeats; r++) {
          const replica = await replicate(space, { host: '127.0.0.1', port: port!, epochMs: 25 });
          ours.push(await serve(space, rate, runMs, r + 1));
          last = replica.stats();
          await replica.close();
          base.push(await serve(space, rate, runMs, r + 1));
        }
        const what = `dirtying random pages at ${rate / 1e6} MB/s`;
        context.record({
          id: `standby: primary throughput per CPU-second (records), ${what}, 25 ms epochs`,
          unit: 'kops/cpu-s',
          value: median(ours.map((o) => o.perCpuSecond)) / 1000,
          baseline: 'the same primary without a standby',
          baselineValue: median(base.map((o) => o.perCpuSecond)) / 1000,
          higherIsBetter: true,
          goal: '>= 0.8x (<= 20% slowdown)',
        });
        context.record({
          id: `standby: primary throughput, wall clock (records/s), ${what}, standby sharing the 2 cores`,
          unit: 'kops/s',
          value: median(ours.map((o) => o.perSecond)) / 1000,
          baseline: 'the same primary without a standby',
          baselineValue: median(base.map((o) => o.perSecond)) / 1000,
          higherIsBetter: true,
        });
        if (last) {
          const share = ((last.cutMs.mean * last.cutMs.count) / runMs) * 100;
          context.log(
            `${what}: ${last.epochsAcked} epochs of ${formatSize(last.epochBytes.p50)} p50 / ${formatSize(last.epochBytes.p99)} p99 ` +
              `(${Math.round(last.epochPages.p50)} pages p50); epoch latency (cut → ack) ${last.epochLatencyMs.p50.toFixed(1)} ms p50 / ${last.epochLatencyMs.p99.toFixed(1)} ms p99; ` +
              `the primary's pause per cut ${last.cutMs.p50.toFixed(2)} ms p50 / ${last.cutMs.p99.toFixed(2)} ms p99, ${share.toFixed(1)}% of the run; skipped cuts ${last.skippedCuts}`,
          );
          context.record({
            id: `standby: epoch latency, cut → ack, ${what} (p50)`,
            unit: 'ms',
            value: last.epochLatencyMs.p50,
            baseline: 'the epoch interval',
            baselineValue: 25,
            higherIsBetter: false,
          });
          context.record({
            id: `standby: the primary's pause per epoch cut, ${what} (p99)`,
            unit: 'ms',
            value: last.cutMs.p99,
            baseline: 'the epoch interval',
            baselineValue: 25,
            higherIsBetter: false,
          });
        }
      }

      // ---- durable() latency after one record write
      const count = context.quick ? 200 : 1000;
      const rtt = (await echoRoundTrips(echoPort!, count)).sort((a, b) => a - b);
      const replica = await replicate(space, { host: '127.0.0.1', port: port! });
      const record = Buffer.alloc(256, 7);
      const latencies: number[] = [];
      for (let i = 0; i < count; i++) {
        space.write(((i * 7919) % (pages * 16)) * 256, record);
        const start = performance.now();
        await replica.durable();
        latencies.push(performance.now() - start);
      }
      await replica.close();
      latencies.sort((a, b) => a - b);
      context.record({
        id: 'standby: durable() latency after a 256 B write, p50',
        unit: 'ms',
        value: percentile(latencies, 0.5),
        baseline: 'loopback TCP round trip to the standby process, p50',
        baselineValue: percentile(rtt, 0.5),
        higherIsBetter: false,
      });
      context.record({
        id: 'standby: durable() latency after a 256 B write, p99',
        unit: 'ms',
        value: percentile(latencies, 0.99),
        baseline: 'loopback TCP round trip to the standby process, p99',
        baselineValue: percentile(rtt, 0.99),
        higherIsBetter: false,
      });
      const tickReplica = await replicate(space, { host: '127.0.0.1', port: port!, durableCut: false });
      const ticked: number[] = [];
      for (let i = 0; i < Math.min(count, 200); i++) {
        space.write(((i * 7919) % (pages * 16)) * 256, record);
        const start = performance.now();
        await tickReplica.durable();
        ticked.push(performance.now() - start);
      }
      await tickReplica.close();
      context.record({
        id: 'standby: durable() p50 waiting for the 25 ms tick (durableCut: false)',
        unit: 'ms',
        value: median(ticked),
        baseline: 'durable() cutting an epoch at once (the default)',
        baselineValue: percentile(latencies, 0.5),
        higherIsBetter: false,
      });
      space.destroy();

      // ---- failover: SIGKILL of a primary process → the standby activated
      context.log('failover: starting primaries');
      const failovers: number[] = [];
      const notices: number[] = [];
      for (let r = 0; r < context.repeats; r++) {
        const primary = startChild({ role: 'primary', port, echoPort, pages: 8192 });
        primary.process.once('exit', (code, signal) => {
          if (signal !== 'SIGKILL')
            context.log(`the primary process exited (${code ?? signal}) before it was killed`);
        });
        await primary.next((line) => line.durable !== undefined && line.durable >= 200);
        context.log(`failover ${r}: the primary confirmed 200 steps; SIGKILL`);
        const killed = performance.now();
        primary.process.kill('SIGKILL');
        const activated = await standby.next(
          (line) => line.activated !== undefined && line.arrived! > killed,
        );
        const closed = await standby.next((line) => line.echoClosed !== undefined && line.arrived! > killed);
        await primary.exited;
        failovers.push(activated.arrived! - killed);
        notices.push(closed.arrived! - killed);
        context.log(
          `failover ${(activated.arrived! - killed).toFixed(1)} ms (activation itself ${activated.failoverMs!.toFixed(2)} ms after the standby noticed)`,
        );
      }
      context.record({
        id: 'standby: failover, SIGKILL of the primary → standby activated',
        unit: 'ms',
        value: median(failovers),
        baseline: 'SIGKILL → a plain socket to the primary noticing',
        baselineValue: median(notices),
        higherIsBetter: false,
        goal: '<= 100 ms',
      });
    } finally {
      standby.process.stdin!.end();
      await standby.exited;
    }
  },
};

function formatSize(bytes: number): string {
  return bytes >= 1024 * 1024
    ? `${(bytes / 1024 / 1024).toFixed(1)} MiB`
    : `${(bytes / 1024).toFixed(0)} KiB`;
}
