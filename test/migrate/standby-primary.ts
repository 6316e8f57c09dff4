/**
 * A primary in its own process, for the failover tests (standby-failover.test.ts):
 *
 *   node --import tsx test/migrate/standby-primary.ts '<json>'
 *
 * json is { port, mode: 'space' | 'heap', pages?, path? }. It replicates to the standby at
 * 127.0.0.1:port, prints {"ready":true}, then writes for ever, printing {"durable":n} each time
 * durable() confirms everything up to step n:
 *   space: step g writes g at both ends of every page 1..pages, then at byte 0 (one large
 *          epoch per step: a kill often lands in the middle of one);
 *   heap:  step i sets key `k<i>` = i in a hash map (root "map") and i = i in a B-tree (root
 *          "tree"); durable() after every 50 steps.
 * It waits to be killed (SIGKILL, SIGSTOP).
 */
import { AddressSpace, FramePool } from '../../src/index.js';
import { Heap, HeapBTree, HeapHashMap } from '../../src/heap/index.js';
import { replicate } from '../../src/migrate/replica.js';

interface Job {
  port: number;
  mode: 'space' | 'heap';
  pages?: number;
  path?: string;
}

const job = JSON.parse(process.argv[2]!) as Job;
const say = (line: unknown): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
const yieldNow = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

if (job.mode === 'space') {
  const pages = job.pages ?? 1024;
  const pageSize = 4096;
  const space = new AddressSpace(new FramePool({ capacity: (pages + 1) * pageSize, pageSize }), {
    size: (pages + 1) * pageSize,
  });
  const replica = await replicate(space, { host: '127.0.0.1', port: job.port, heartbeatTimeoutMs: 5000 });
  say({ ready: true });
  for (let g = 1; ; g++) {
    for (let p = 1; p <= pages; p++) {
      space.writeU32(p * pageSize, g);
      space.writeU32(p * pageSize + pageSize - 4, g);
    }
    space.writeU32(0, g);
    await replica.durable();
    say({ durable: g });
  }
} else {
  const heap = await Heap.create({ path: job.path!, size: '256MiB', checkpointIntervalMs: 0 });
  const map = HeapHashMap.create(heap, { keys: 'string', values: 'number' });
  const tree = HeapBTree.create(heap, { keys: 'number', values: 'number' });
  heap.setRoot('map', map.address);
  heap.setRoot('tree', tree.address);
  const replica = await replicate(heap, { host: '127.0.0.1', port: job.port, heartbeatTimeoutMs: 5000 });
  say({ ready: true });
  for (let i = 0; ; i++) {
    map.set(`k${i}`, i);
    tree.set(i, i);
    if (i % 50 === 49) {
      await replica.durable();
      say({ durable: i + 1 });
    } else if (i % 10 === 0) await yieldNow();
  }
}
