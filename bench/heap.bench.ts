/**
 * The persistent heap beside its peers (issue 9, "Benchmarks"), each figure beside a baseline
 * measured in the same run:
 *
 *   1. records: keys `user:000123456`, values random bytes of 100 B–1 KiB (msgpack-packed on
 *      both sides). A HeapBTree (ordered, like LMDB's B+tree) vs lmdb-js with the same
 *      durability: a durable commit every 100 ms for both (the heap's automatic checkpoint every
 *      100 ms; lmdb's `commitDelay: 100` with its default synced commits), and a final durable
 *      commit awaited inside the timed put phase (heap.checkpoint(), db.flushed). Random get
 *      ops/s, put ops/s, ordered range scan rows/s, file size; HeapHashMap gets; a JS Map as the
 *      in-memory ceiling. Then a data set 8× the heap's budget (LMDB has the page cache).
 *   2. checkpoint of D dirty pages vs pwrite of D pages to fresh file offsets + fdatasync.
 *   3. reopen after kill -9 to the first read, in fresh child processes running compiled JS
 *      (tsc into .tmp/), vs lmdb open + first get of a db of the same bytes, also killed -9.
 *   4. the longest event-loop lag during a checkpoint of 10k dirty pages vs the same probe with
 *      no checkpoint running.
 *
 * Quick mode scales everything down (said in each figure's name). Page cache is warm for both
 * sides alike. Runs alone too: `node --import tsx bench/heap.bench.ts [--quick]`.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fdatasyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { open as openLmdb } from 'lmdb';
import { Heap } from '../src/heap/heap.js';
import { HeapBTree } from '../src/heap/btree.js';
import { HeapHashMap } from '../src/heap/hash-map.js';
import { interleaved, interleavedAsync, median, type BenchContext, type Suite } from './harness.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;
const BATCH = 1000;
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

const keyOf = (i: number) => `user:${String(i).padStart(9, '0')}`;

/** `count` records with distinct random values of 100..1024 bytes (deterministic sizes). */
function makeRecords(count: number): { keys: string[]; values: Buffer[]; bytes: number } {
  const keys: string[] = [];
  const values: Buffer[] = [];
  let bytes = 0;
  const pool = randomBytes(2 * MiB);
  for (let i = 0; i < count; i++) {
    const size = 100 + ((Math.imul(i + 1, 2654435761) >>> 0) % 925);
    const at = (Math.imul(i + 7, 40503) >>> 0) % (pool.length - size);
    const value = Buffer.from(pool.subarray(at, at + size));
    value.writeUInt32LE(i, 0); // distinct
    keys.push(keyOf(i));
    values.push(value);
    bytes += size;
  }
  return { keys, values, bytes };
}

/** Random visiting order (a fixed permutation). */
function shuffled(count: number): Uint32Array {
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  let seed = 12345;
  for (let i = count - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    const j = seed % (i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

function allocatedBytes(path: string): number {
  const s = statSync(path);
  if (!s.isDirectory()) return s.blocks * 512;
  return readdirSync(path).reduce((sum, name) => sum + allocatedBytes(join(path, name)), 0);
}

interface Getter {
  get(key: string): unknown;
}

function getRate(store: Getter, keys: string[], order: Uint32Array, count: number): number {
  const start = performance.now();
  for (let n = 0; n < count; n++) {
    if (store.get(keys[order[n % order.length]!]!) === undefined) throw new Error('missing record');
  }
  return count / ((performance.now() - start) / 1000);
}

/** Fills a heap B+tree (and hash map when asked) in batches, letting the 100 ms checkpoints run; ops/s including the final checkpoint. */
async function heapPuts(
  heap: Heap,
  tree: HeapBTree<string, Uint8Array>,
  keys: string[],
  values: Buffer[],
): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < keys.length; i += BATCH) {
    const end = Math.min(keys.length, i + BATCH);
    for (let j = i; j < end; j++) tree.set(keys[j]!, values[j]!);
    await yieldToLoop();
  }
  await heap.checkpoint();
  return keys.length / ((performance.now() - start) / 1000);
}

type Lmdb = ReturnType<typeof openLmdb>;

async function lmdbPuts(db: Lmdb, keys: string[], values: Buffer[]): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < keys.length; i += BATCH) {
    const end = Math.min(keys.length, i + BATCH);
    for (let j = i; j < end; j++) void db.put(keys[j]!, values[j]!);
    await yieldToLoop();
  }
  await db.flushed;
  return keys.length / ((performance.now() - start) / 1000);
}

function scanRate(rows: () => Iterable<unknown>, expected: number): number {
  const start = performance.now();
  let n = 0;
  for (const _ of rows()) n++;
  if (n !== expected) throw new Error(`scan saw ${n} rows, expected ${expected}`);
  return n / ((performance.now() - start) / 1000);
}

async function recordsSection(
  context: BenchContext,
  dir: string,
  label: string,
  count: number,
  budget: number,
  withCeiling: boolean,
): Promise<void> {
  const { keys, values, bytes } = makeRecords(count);
  const order = shuffled(count);
  const gets = Math.min(count, context.quick ? 100_000 : 500_000);
  context.log(
    `${label}: ${count} records, ${(bytes / MiB).toFixed(0)} MiB of values, heap budget ${budget / MiB} MiB`,
  );
  const slug = label.replace(/[^a-z0-9]+/gi, '-');
  const heapPath = join(dir, `${slug}.heap`);
  const lmdbPath = join(dir, `${slug}-lmdb`);
  mkdirSync(lmdbPath);
  const heap = await Heap.create({ path: heapPath, budget, size: '64GiB', checkpointIntervalMs: 100 });
  const db = openLmdb({ path: lmdbPath, commitDelay: 100, compression: false, noSubdir: false });
  try {
    const tree = HeapBTree.create<'string', 'msgpack', Uint8Array>(heap, {
      keys: 'string',
      values: 'msgpack',
    });
    heap.setRoot('tree', tree.address);
    // Puts: one fill each (the data set is the expensive part), heap first then lmdb.
    const heapPut = await heapPuts(heap, tree, keys, values);
    const lmdbPut = await lmdbPuts(db, keys, values);
    const record = (id: string, unit: string, ours: number, base: number, goal?: string, higher = true) =>
      context.record({
        id: `heap ${label}: ${id}`,
        unit,
        value: ours,
        baseline: 'lmdb-js, same records, commit+sync every 100 ms',
        baselineValue: base,
        higherIsBetter: higher,
        goal,
      });
    record('B+tree put (insert, key order, durable)', 'ops/s', heapPut, lmdbPut, '>= 1.0x');
    const [heapGet, lmdbGet] = interleaved(
      context.repeats,
      () => getRate(tree, keys, order, gets),
      () => getRate(db, keys, order, gets),
    );
    record('B+tree get (random)', 'ops/s', heapGet, lmdbGet, '>= 1.0x');
    const scans = context.quick ? 1 : 3;
    const [heapScan, lmdbScan] = interleaved(
      scans,
      () => scanRate(() => tree.range(), count),
      () => scanRate(() => db.getRange(), count),
    );
    record('B+tree ordered range scan (all)', 'rows/s', heapScan, lmdbScan);
    // Random overwrites of existing keys (new values of the same sizes), durable as above.
    const updates = Math.min(count, context.quick ? 50_000 : 200_000);
    const upKeys = Array.from({ length: updates }, (_, n) => keys[order[n]!]!);
    const upValues = Array.from({ length: updates }, (_, n) => values[(order[n]! + 1) % count]!);
    const heapUpdate = await heapPuts(heap, tree, upKeys, upValues);
    const lmdbUpdate = await lmdbPuts(db, upKeys, upValues);
    record('B+tree put (overwrite, random keys, durable)', 'ops/s', heapUpdate, lmdbUpdate, '>= 1.0x');
    await heap.checkpoint();
    record(
      'file size (allocated)',
      'MiB',
      allocatedBytes(heapPath) / MiB,
      allocatedBytes(lmdbPath) / MiB,
      undefined,
      false,
    );
    if (withCeiling) {
      const hash = HeapHashMap.create<'string', 'msgpack', Uint8Array>(heap, {
        keys: 'string',
        values: 'msgpack',
      });
      for (let i = 0; i < count; i += BATCH) {
        const end = Math.min(count, i + BATCH);
        for (let j = i; j < end; j++) hash.set(keys[j]!, values[j]!);
        await yieldToLoop();
      }
      const [hashGet, lmdbGet2] = interleaved(
        context.repeats,
        () => getRate(hash, keys, order, gets),
        () => getRate(db, keys, order, gets),
      );
      record('HeapHashMap get (random)', 'ops/s', hashGet, lmdbGet2, '>= 1.0x');
      // The in-memory ceiling: a JS Map of the same records.
      const map = new Map<string, Buffer>();
      const mapStart = performance.now();
      for (let i = 0; i < count; i++) map.set(keys[i]!, values[i]!);
      const mapPut = count / ((performance.now() - mapStart) / 1000);
      const [treeGet, mapGet] = interleaved(
        context.repeats,
        () => getRate(tree, keys, order, gets),
        () => getRate(map, keys, order, gets),
      );
      const ceiling = (id: string, ours: number, base: number) =>
        context.record({
          id: `heap ${label}: ${id}`,
          unit: 'ops/s',
          value: ours,
          baseline: 'JS Map, same records (in-memory ceiling)',
          baselineValue: base,
          higherIsBetter: true,
        });
      ceiling('B+tree put (insert, durable)', heapPut, mapPut);
      ceiling('B+tree get (random)', treeGet, mapGet);
      ceiling('HeapHashMap get (random)', hashGet, mapGet);
    }
  } finally {
    await heap.close();
    await db.close();
  }
}

/** A heap with `pages` pages of one large object, resident (budget well above it). */
async function dirtyHeap(
  dir: string,
  pages: number,
  tag: string,
): Promise<{ heap: Heap; dirty: () => void }> {
  const heap = await Heap.create({
    path: join(dir, `${tag}-${pages}.heap`),
    budget: pages * PAGE * 2 + 16 * MiB,
    checkpointIntervalMs: 0,
  });
  const base = heap.alloc(pages * PAGE);
  let round = 0;
  const dirty = () => {
    round++;
    for (let p = 0; p < pages; p++) heap.space.writeU32(base + p * PAGE + (round % 64) * 4, round ^ p);
  };
  dirty();
  await heap.checkpoint();
  return { heap, dirty };
}

async function checkpointSection(context: BenchContext, dir: string): Promise<void> {
  for (const pages of [1000, 10_000]) {
    const { heap, dirty } = await dirtyHeap(dir, pages, 'checkpoint');
    const rawPath = join(dir, `raw-${pages}.bin`);
    const fd = openSync(rawPath, 'w');
    const page = randomBytes(PAGE);
    let rawRound = 0;
    try {
      const reports: number[] = [];
      const [ours, raw] = await interleavedAsync(
        context.repeats,
        async () => {
          dirty();
          const start = performance.now();
          const report = await heap.checkpoint();
          const ms = performance.now() - start;
          if (report.dirtyPages < pages) throw new Error(`checkpoint saw ${report.dirtyPages} dirty pages`);
          reports.push(report.pauseMs);
          return ms;
        },
        async () => {
          // Fresh offsets each round, as the heap's checkpoint writes to fresh slots.
          const at = rawRound++ * pages * PAGE;
          const start = performance.now();
          for (let p = 0; p < pages; p++) {
            page.writeUInt32LE(p, 0);
            writeSync(fd, page, 0, PAGE, at + p * PAGE);
          }
          fdatasyncSync(fd);
          return performance.now() - start;
        },
      );
      context.record({
        id: `heap checkpoint of ${pages} dirty 4 KiB pages (commit, 2 fdatasyncs)`,
        unit: 'ms',
        value: ours,
        baseline: 'pwrite the same pages to fresh offsets + fdatasync',
        baselineValue: raw,
        higherIsBetter: false,
        goal: '<= 1.2x',
      });
      context.log(`checkpoint of ${pages} pages: pause (fork) median ${median(reports).toFixed(2)} ms`);
    } finally {
      closeSync(fd);
      await heap.close();
    }
  }
}

async function pauseSection(context: BenchContext, dir: string): Promise<void> {
  const pages = 10_000;
  const { heap, dirty } = await dirtyHeap(dir, pages, 'pause');
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  // A second probe: a 1 ms interval recording its own lateness, the program's view of a pause.
  const probe = async (during: () => Promise<unknown>) => {
    let worst = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      worst = Math.max(worst, now - last - 1);
      last = now;
    }, 1);
    histogram.reset();
    histogram.enable();
    await during();
    histogram.disable();
    clearInterval(timer);
    return { max: histogram.max / 1e6, p99: histogram.percentile(99) / 1e6, interval: worst };
  };
  try {
    const ours: Array<{ max: number; p99: number; interval: number }> = [];
    const base: Array<{ max: number; p99: number; interval: number }> = [];
    for (let r = 0; r <= context.repeats; r++) {
      dirty();
      let took = 0;
      const a = await probe(async () => {
        const start = performance.now();
        await heap.checkpoint();
        took = performance.now() - start;
      });
      const b = await probe(() => sleep(Math.max(20, took)));
      if (r > 0) {
        ours.push(a);
        base.push(b);
      }
    }
    const pick = (list: typeof ours, key: 'max' | 'p99' | 'interval') => median(list.map((x) => x[key]));
    for (const [key, label] of [
      ['max', 'longest event-loop lag (monitorEventLoopDelay max)'],
      ['interval', 'longest 1 ms interval lateness'],
      ['p99', 'p99 event-loop lag'],
    ] as const) {
      context.record({
        id: `heap checkpoint of ${pages} dirty pages: ${label}`,
        unit: 'ms',
        value: pick(ours, key),
        baseline: 'same probe, same duration, no checkpoint',
        baselineValue: pick(base, key),
        higherIsBetter: false,
        goal: key === 'p99' ? undefined : '<= 5 ms (absolute)',
      });
    }
  } finally {
    await heap.close();
  }
}

const FILL_HEAP = `
import { Heap } from './heap/heap.js';
const [path, total] = [process.argv[2], Number(process.argv[3])];
const heap = await Heap.create({ path, size: '16GiB', budget: '64MiB', checkpointIntervalMs: 0 });
const CHUNK = 1 << 20;
const chunk = Buffer.alloc(CHUNK);
let first = 0;
for (let done = 0; done < total; done += CHUNK) {
  for (let p = 0; p < CHUNK; p += 4096) chunk.writeUInt32LE((done + p) >>> 12, p);
  const address = heap.alloc(CHUNK);
  if (first === 0) first = address;
  heap.space.write(address, chunk);
  if (done % (128 << 20) === 0) await heap.checkpoint();
}
heap.space.writeU32(first, 0xc0ffee);
heap.setRoot('first', first);
await heap.checkpoint();
heap.space.writeU32(first + 8, 1); // uncommitted: lost by the kill
process.stdout.write('ready\\n');
setInterval(() => {}, 1000);
`;

const OPEN_HEAP = `
import { Heap } from './heap/heap.js';
const start = performance.now();
const heap = await Heap.open({ path: process.argv[2], checkpointIntervalMs: 0 });
const value = heap.space.readU32(heap.root('first'));
const ms = performance.now() - start;
if (value !== 0xc0ffee) throw new Error('wrong first value ' + value);
process.stdout.write(JSON.stringify({ ms }) + '\\n');
process.exit(0);
`;

const FILL_LMDB = `
import { open } from 'lmdb';
const [path, total] = [process.argv[2], Number(process.argv[3])];
const db = open({ path, compression: false, noSubdir: false });
const value = Buffer.alloc(1000);
let i = 0;
for (let done = 0; done < total; ) {
  await db.transaction(() => {
    for (let n = 0; n < 1000 && done < total; n++, i++, done += value.length) {
      value.writeUInt32LE(i, 0);
      db.put('user:' + String(i).padStart(9, '0'), value);
    }
  });
}
await db.flushed;
process.stdout.write('ready\\n');
setInterval(() => {}, 1000);
`;

const OPEN_LMDB = `
import { open } from 'lmdb';
const start = performance.now();
const db = open({ path: process.argv[2], compression: false, noSubdir: false });
const value = db.get('user:000000000');
const ms = performance.now() - start;
if (!value) throw new Error('missing first record');
process.stdout.write(JSON.stringify({ ms }) + '\\n');
process.exit(0);
`;

/** Runs `script` until it prints "ready", then kill -9. */
function fillAndKill(script: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (data: Buffer) => {
      out += data.toString();
      if (out.includes('ready')) child.kill('SIGKILL');
    });
    child.on('exit', (code, signal) =>
      signal === 'SIGKILL' ? resolve() : reject(new Error(`${script} exited ${code} before ready`)),
    );
  });
}

/** Runs `script` in a fresh process and returns the ms it reports (open + first read). */
function timedChild(script: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (data: Buffer) => (out += data.toString()));
    child.on('exit', (code) =>
      code === 0
        ? resolve((JSON.parse(out) as { ms: number }).ms)
        : reject(new Error(`${script} exited ${code}`)),
    );
  });
}

async function reopenSection(context: BenchContext, dir: string): Promise<void> {
  const total = context.quick ? 512 * MiB : 4096 * MiB;
  const label = context.quick ? '512 MiB (quick mode; 4 GiB in full mode)' : '4 GiB';
  mkdirSync(join(repoRoot, '.tmp'), { recursive: true });
  const build = mkdtempSync(join(repoRoot, '.tmp', 'bench-build-'));
  try {
    // Compiled JS: tsx's on-the-fly compile of the pager's worker would dominate the figure.
    execFileSync(
      process.execPath,
      [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', build],
      {
        cwd: repoRoot,
        stdio: 'inherit',
      },
    );
    const scripts = { fillHeap: FILL_HEAP, openHeap: OPEN_HEAP, fillLmdb: FILL_LMDB, openLmdb: OPEN_LMDB };
    const paths = Object.fromEntries(
      Object.entries(scripts).map(([name, text]) => {
        const path = join(build, `${name}.mjs`);
        writeFileSync(path, text);
        return [name, path];
      }),
    ) as Record<keyof typeof scripts, string>;
    const heapPath = join(dir, 'reopen.heap');
    const lmdbPath = join(dir, 'reopen-lmdb');
    mkdirSync(lmdbPath);
    let start = performance.now();
    await fillAndKill(paths.fillHeap, [heapPath, String(total)]);
    context.log(
      `reopen: filled the heap with ${label} in ${((performance.now() - start) / 1000).toFixed(1)} s, killed -9`,
    );
    start = performance.now();
    await fillAndKill(paths.fillLmdb, [lmdbPath, String(total)]);
    context.log(
      `reopen: filled lmdb with ${label} in ${((performance.now() - start) / 1000).toFixed(1)} s, killed -9`,
    );
    context.log(
      `reopen: heap file ${(allocatedBytes(heapPath) / MiB).toFixed(0)} MiB, lmdb ${(allocatedBytes(lmdbPath) / MiB).toFixed(0)} MiB allocated`,
    );
    const [ours, base] = await interleavedAsync(
      context.repeats,
      () => timedChild(paths.openHeap, [heapPath]),
      () => timedChild(paths.openLmdb, [lmdbPath]),
    );
    context.record({
      id: `heap reopen after kill -9 to the first read, ${label} heap (fresh process, compiled JS)`,
      unit: 'ms',
      value: ours,
      baseline: 'lmdb-js open + first get, same bytes, killed -9 too',
      baselineValue: base,
      higherIsBetter: false,
      goal: '<= 100 ms (absolute)',
    });
  } finally {
    rmSync(build, { recursive: true, force: true });
  }
}

async function run(context: BenchContext): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-bench-heap-'));
  try {
    const only = process.env.HEAP_BENCH_SECTIONS?.split(',');
    const want = (name: string) => !only || only.includes(name);
    if (want('records')) {
      const count = context.quick ? 100_000 : 1_000_000;
      await recordsSection(
        context,
        dir,
        context.quick ? '100k records (quick; 1 M in full)' : '1 M records',
        count,
        1024 * MiB,
        true,
      );
    }
    if (want('big')) {
      // 8x the budget: quick 8 MiB budget, 64 MiB of values; full 64 MiB budget, 512 MiB.
      const budget = context.quick ? 8 * MiB : 64 * MiB;
      const count = Math.round((8 * budget) / 562); // mean value size is 562 B
      await recordsSection(context, dir, `8x budget (${budget / MiB} MiB budget)`, count, budget, false);
    }
    if (want('checkpoint')) await checkpointSection(context, dir);
    if (want('pause')) await pauseSection(context, dir);
    if (want('reopen')) await reopenSection(context, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const heapSuite: Suite = { name: 'heap', run };

if (import.meta.url === `file://${process.argv[1]}`) {
  const quick = process.argv.includes('--quick');
  await run({
    quick,
    repeats: quick ? 3 : 7,
    record: (row) =>
      console.log(
        `${row.id}: ${row.value.toPrecision(4)} ${row.unit} | ${row.baseline}: ${row.baselineValue.toPrecision(4)} | ratio ${(row.value / row.baselineValue).toFixed(2)}${row.goal ? ` | goal ${row.goal}` : ''}`,
      ),
    log: (message) => console.log(`  ${message}`),
  });
}
