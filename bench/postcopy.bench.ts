/**
 * Post-copy figures (issue 10), each beside a baseline from the same run, the source in a child
 * process and the destination here, over TCP on 127.0.0.1:
 *   - switchover time (the source's gate closing to the destination running its first
 *     instruction, as the source sees it: one round trip included) beside stop-and-copy of the
 *     same space (gate, send every page, then switch: its downtime is its whole copy);
 *   - total time until every page has moved, beside the same stop-and-copy;
 *   - fault latency (a read of a page still on the source, timed by the reader) p50 and p99,
 *     beside a read of a resident page (per read, timed the same way).
 * A 1 GiB space, every page data (quick: 64 MiB).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { MessageConnection } from '../src/migrate/connection.js';
import { receivePostCopy, type PostCopyHello } from '../src/migrate/postcopy-destination.js';
import { FramePool } from '../src/memory/frame-pool.js';
import { AddressSpace } from '../src/memory/address-space.js';
import { encodeFrame, readPageBatch } from '../src/migrate/wire.js';
import { median, percentile, type BenchContext, type Suite } from './harness.js';
import { SC_DONE, SC_PAGES, SC_RESUMED } from './postcopy-child.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const CHILD = fileURLToPath(new URL('./postcopy-child.ts', import.meta.url));

interface Message {
  type: string;
  [key: string]: unknown;
}

class Child {
  private readonly inbox: Message[] = [];
  private wake: (() => void) | undefined;
  constructor(readonly process: ChildProcess) {
    process.on('message', (message: Message) => {
      this.inbox.push(message);
      this.wake?.();
    });
  }
  send(message: unknown): void {
    this.process.send(message as never);
  }
  async next(type: string): Promise<Message> {
    for (;;) {
      const at = this.inbox.findIndex((m) => m.type === type || m.type === 'failed');
      if (at >= 0) {
        const message = this.inbox.splice(at, 1)[0]!;
        if (message.type === 'failed') throw new Error(`bench source failed: ${String(message.message)}`);
        return message;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}

async function listen(): Promise<{ port: number; accepted: Promise<Socket>; close: () => void }> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  return { port: (server.address() as { port: number }).port, accepted, close: () => server.close() };
}

async function postCopyOnce(child: Child, bytes: number): Promise<{ switchoverMs: number; totalMs: number }> {
  const { port, accepted, close } = await listen();
  child.send({ cmd: 'postcopy', port, migrationId: randomUUID(), paced: false });
  const connection = new MessageConnection(await accepted);
  close();
  const hello = (await child.next('hello')).hello as PostCopyHello;
  const destination = await receivePostCopy(connection, hello, {
    budget: bytes + 64 * PAGE,
    local: { kind: 'memory' },
  });
  destination.space.readU32(0); // the first instruction
  await destination.completed;
  const report = (await child.next('done')).report as { switchoverMs: number; totalMs: number };
  destination.space.destroy();
  await destination.pager.close();
  return report;
}

async function stopCopyOnce(child: Child, bytes: number): Promise<{ switchoverMs: number; totalMs: number }> {
  const { port, accepted, close } = await listen();
  child.send({ cmd: 'stopcopy', port });
  const connection = new MessageConnection(await accepted);
  close();
  const pool = new FramePool({ pageSize: PAGE, capacity: bytes + 64 * PAGE });
  const space = new AddressSpace(pool, { size: bytes });
  const pages = bytes / PAGE;
  await new Promise<void>((resolve) =>
    connection.onMessage((type, payload) => {
      if (type === SC_PAGES) {
        readPageBatch(payload, PAGE, pages, (first, _count, _kind, data) => space.write(first * PAGE, data));
      } else if (type === SC_DONE) {
        space.readU32(0); // the first instruction
        resolve();
      }
    }),
  );
  connection.post(encodeFrame(SC_RESUMED));
  const report = (await child.next('done')).report as { switchoverMs: number; totalMs: number };
  await connection.close();
  space.destroy();
  return report;
}

/** Fault latency: reads of pages still on the source (push held back), then of the same pages resident. */
async function faultLatency(
  child: Child,
  bytes: number,
  reads: number,
): Promise<{ fault: Float64Array; resident: Float64Array }> {
  const { port, accepted, close } = await listen();
  child.send({ cmd: 'postcopy', port, migrationId: randomUUID(), paced: true });
  const connection = new MessageConnection(await accepted);
  close();
  const hello = (await child.next('hello')).hello as PostCopyHello;
  const destination = await receivePostCopy(connection, hello, {
    budget: bytes + 64 * PAGE,
    local: { kind: 'memory' },
    // One page per fault: the figure is a fault's own latency, not a read-ahead's hit.
    readAhead: 0,
  });
  const { space } = destination;
  const pages = bytes / PAGE;
  const chosen = new Float64Array(reads);
  const step = Math.max(1, Math.floor(pages / reads));
  for (let i = 0; i < reads; i++) chosen[i] = ((i * step * 7919) % pages) * PAGE + 16;
  const fault = new Float64Array(reads);
  const resident = new Float64Array(reads);
  let sink = 0;
  for (let i = 0; i < reads; i++) {
    const start = performance.now();
    sink += space.readU32(chosen[i]!);
    fault[i] = performance.now() - start;
  }
  for (let i = 0; i < reads; i++) {
    const start = performance.now();
    sink += space.readU32(chosen[i]! + 4);
    resident[i] = performance.now() - start;
  }
  if (sink === 0.5) console.error(sink);
  child.send({ cmd: 'push', batches: 1e9 });
  await destination.completed;
  await child.next('done');
  space.destroy();
  await destination.pager.close();
  fault.sort();
  resident.sort();
  return { fault, resident };
}

export const postcopySuite: Suite = {
  name: 'postcopy',
  async run(context: BenchContext): Promise<void> {
    const bytes = (context.quick ? 64 : 1024) * MiB;
    const sourceProcess = fork(CHILD, [], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const child = new Child(sourceProcess);
    try {
      await child.next('ready');
      child.send({ cmd: 'build', bytes });
      await child.next('built');
      const post: { switchoverMs: number; totalMs: number }[] = [];
      const stop: { switchoverMs: number; totalMs: number }[] = [];
      const repeats = Math.max(1, Math.min(context.repeats, 3));
      // One untimed round each (JIT, page cache), then interleaved.
      await postCopyOnce(child, bytes);
      await stopCopyOnce(child, bytes);
      for (let i = 0; i < repeats; i++) {
        post.push(await postCopyOnce(child, bytes));
        stop.push(await stopCopyOnce(child, bytes));
      }
      const size = `${bytes / MiB} MiB`;
      const postSwitch = median(post.map((r) => r.switchoverMs));
      const stopSwitch = median(stop.map((r) => r.switchoverMs));
      context.record({
        id: `postcopy switchover, ${size} space (ms)`,
        unit: 'ms',
        value: postSwitch,
        baseline: 'stop-and-copy downtime, same space',
        baselineValue: stopSwitch,
        higherIsBetter: false,
        goal: 'blackout <= 30 ms, >= 20x shorter than stop-and-copy',
      });
      context.record({
        id: `postcopy total time, ${size} space (ms)`,
        unit: 'ms',
        value: median(post.map((r) => r.totalMs)),
        baseline: 'stop-and-copy total, same space',
        baselineValue: median(stop.map((r) => r.totalMs)),
        higherIsBetter: false,
      });
      const reads = context.quick ? 500 : 2000;
      const { fault, resident } = await faultLatency(child, bytes, reads);
      context.record({
        id: 'postcopy fault latency p50 (us)',
        unit: 'us',
        value: percentile(fault, 0.5) * 1000,
        baseline: 'resident read p50, same pages',
        baselineValue: percentile(resident, 0.5) * 1000,
        higherIsBetter: false,
      });
      context.record({
        id: 'postcopy fault latency p99 (us)',
        unit: 'us',
        value: percentile(fault, 0.99) * 1000,
        baseline: 'resident read p99, same pages',
        baselineValue: percentile(resident, 0.99) * 1000,
        higherIsBetter: false,
      });
    } finally {
      child.send({ cmd: 'exit' });
      await once(sourceProcess, 'exit');
    }
  },
};
