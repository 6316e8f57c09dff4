import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { ErrorCodes } from '../../src/errors.js';
import { Heap } from '../../src/heap/heap.js';
import { HeapImage } from '../../src/heap/image.js';
import { HeapBTree } from '../../src/heap/btree.js';
import { seededBytes } from '../fabric/seeded-bytes.js';
import { typedError } from '../typed-error.js';

const dir = mkdtempSync(join(tmpdir(), 'memfabric-heap-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(dir, `heap-${counter++}.img`);
const FORK_WRITER = fileURLToPath(new URL('./fork-writer.ts', import.meta.url));

test('objects and roots persist: create, allocate, name, close, reopen', async () => {
  const path = fresh();
  const heap = await Heap.create({ path, size: '1GiB', budget: '1MiB', checkpointIntervalMs: 0 });
  assert.equal(heap.generation, 1, 'create commits the formatted heap');
  const small = heap.alloc(40);
  heap.space.write(small, Buffer.from('a small object'));
  const big = heap.alloc(3 * 4096 + 17);
  heap.space.write(big, seededBytes(5, 3 * 4096 + 17));
  heap.setRoot('small', small);
  heap.setRoot('big', big);
  heap.setRoot('gone', heap.alloc(8));
  heap.setRoot('gone', 0);
  const statsBefore = heap.stats().allocator;
  await heap.close();

  const again = await Heap.open({ path, budget: '1MiB', checkpointIntervalMs: 0 });
  assert.deepEqual([...again.roots().keys()].sort(), ['big', 'small']);
  assert.equal(again.root('gone'), 0);
  const back = Buffer.alloc(14);
  again.space.read(again.root('small'), back);
  assert.equal(back.toString(), 'a small object');
  const bigBack = Buffer.alloc(3 * 4096 + 17);
  again.space.read(again.root('big'), bigBack);
  assert.deepEqual(bigBack, seededBytes(5, 3 * 4096 + 17));
  assert.deepEqual(again.stats().allocator, statsBefore);
  assert.equal(again.usableSize(small) >= 40, true);
  again.free(small);
  assert.throws(() => again.free(small), typedError(ErrorCodes.HEAP_BAD_FREE));
  assert.deepEqual(await again.check(), { ok: true, problems: [] });
  await again.close();
});

test('a closed heap refuses every call with HEAP_CLOSED', async () => {
  const heap = await Heap.create({ path: fresh(), size: '64MiB', checkpointIntervalMs: 0 });
  await heap.close();
  for (const call of [
    () => heap.alloc(8),
    () => heap.free(4096),
    () => heap.root('x'),
    () => heap.setRoot('x', 0),
    () => heap.space,
    () => heap.stats(),
    () => heap.checkpoint(),
  ]) {
    assert.throws(call, typedError(ErrorCodes.HEAP_CLOSED, 'Heap.open'));
  }
  await heap.close(); // a second close is harmless
});

test('root names: too long or empty is INVALID_ARGUMENT; the table holds rootsMax names', async () => {
  const heap = await Heap.create({ path: fresh(), size: '64MiB', pageSize: 1024, checkpointIntervalMs: 0 });
  assert.throws(() => heap.setRoot('x'.repeat(56), 8), typedError(ErrorCodes.INVALID_ARGUMENT, '56 bytes'));
  assert.throws(() => heap.setRoot('', 8), typedError(ErrorCodes.INVALID_ARGUMENT));
  for (let i = 0; i < heap.rootsMax; i++) heap.setRoot(`r${i}`, 1024 * (i + 1));
  assert.throws(() => heap.setRoot('one-more', 8), typedError(ErrorCodes.INVALID_ARGUMENT, 'at most'));
  heap.setRoot('r0', 0);
  heap.setRoot('one-more', 8);
  assert.equal(heap.roots().size, heap.rootsMax);
  assert.equal(heap.root(`r${heap.rootsMax - 1}`), 1024 * heap.rootsMax);
  await heap.close();
});

test('model: allocations, frees, reallocs, roots, B+tree entries, checkpoints and reopens agree with a JS model', async () => {
  const op = fc.oneof(
    {
      arbitrary: fc.record({
        kind: fc.constant('alloc' as const),
        size: fc.integer({ min: 1, max: 9000 }),
        seed: fc.integer(),
      }),
      weight: 5,
    },
    { arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }), weight: 2 },
    {
      arbitrary: fc.record({
        kind: fc.constant('realloc' as const),
        pick: fc.nat(),
        size: fc.integer({ min: 1, max: 9000 }),
        seed: fc.integer(),
      }),
      weight: 1,
    },
    {
      arbitrary: fc.record({
        kind: fc.constant('root' as const),
        pick: fc.nat(),
        name: fc.constantFrom('a', 'b', 'c'),
      }),
      weight: 1,
    },
    {
      arbitrary: fc.record({
        kind: fc.constant('put' as const),
        key: fc.string({ maxLength: 12 }),
        value: fc
          .jsonValue()
          .filter((v) => !JSON.stringify(v).includes('__proto__'))
          .map((v) => JSON.parse(JSON.stringify(v)) as unknown),
      }),
      weight: 3,
    },
    { arbitrary: fc.record({ kind: fc.constant('del' as const), pick: fc.nat() }), weight: 1 },
    { arbitrary: fc.record({ kind: fc.constant('checkpoint' as const) }), weight: 1 },
    { arbitrary: fc.record({ kind: fc.constant('reopen' as const) }), weight: 1 },
  );
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
      const path = fresh();
      const options = { path, size: '256MiB', budget: '256KiB', checkpointIntervalMs: 0 };
      let heap = await Heap.create(options);
      // A B+tree of msgpack values at a root the model never names.
      const tree = (h: Heap): HeapBTree<string, unknown> => {
        if (h.root('tree') === 0)
          h.setRoot('tree', HeapBTree.create(h, { keys: 'string', values: 'msgpack' }).address);
        return HeapBTree.open(h, h.root('tree'), { keys: 'string', values: 'msgpack' });
      };
      let entries = tree(heap);
      type Model = { objects: Map<number, Buffer>; roots: Map<string, number>; tree: Map<string, unknown> };
      let live: Model = { objects: new Map(), roots: new Map(), tree: new Map() };
      const copy = (m: Model): Model => ({
        objects: new Map(m.objects),
        roots: new Map(m.roots),
        tree: new Map(m.tree),
      });
      await heap.checkpoint();
      let committed = copy(live);
      const pick = (n: number): number | undefined =>
        [...live.objects.keys()][n % Math.max(1, live.objects.size)];
      try {
        for (const o of ops) {
          if (o.kind === 'alloc') {
            const address = heap.alloc(o.size);
            const bytes = seededBytes(o.seed, o.size);
            await heap.space.writeAsync(address, bytes);
            live.objects.set(address, bytes);
          } else if (o.kind === 'free') {
            const address = pick(o.pick);
            if (address === undefined) continue;
            heap.free(address);
            live.objects.delete(address);
          } else if (o.kind === 'realloc') {
            const address = pick(o.pick);
            if (address === undefined) continue;
            const old = live.objects.get(address)!;
            const moved = heap.realloc(address, o.size);
            const kept = old.subarray(0, Math.min(old.length, o.size));
            const check = Buffer.alloc(kept.length);
            await heap.space.readAsync(moved, check);
            assert.deepEqual(check, kept, 'realloc keeps the bytes that fit');
            const bytes = seededBytes(o.seed, o.size);
            await heap.space.writeAsync(moved, bytes);
            live.objects.delete(address);
            live.objects.set(moved, bytes);
          } else if (o.kind === 'root') {
            const address = pick(o.pick) ?? 0;
            heap.setRoot(o.name, address);
            if (address === 0) live.roots.delete(o.name);
            else live.roots.set(o.name, address);
          } else if (o.kind === 'put') {
            entries.set(o.key, o.value);
            live.tree.set(o.key, o.value);
          } else if (o.kind === 'del') {
            const key = [...live.tree.keys()].sort()[o.pick % Math.max(1, live.tree.size)];
            if (key === undefined) continue;
            assert.equal(entries.delete(key), true);
            live.tree.delete(key);
          } else if (o.kind === 'checkpoint') {
            await heap.checkpoint();
            committed = copy(live);
          } else {
            await heap.close({ checkpoint: false });
            heap = await Heap.open(options);
            entries = tree(heap);
            live = copy(committed);
          }
        }
        await heap.close();
        heap = await Heap.open(options);
        for (const [address, bytes] of live.objects) {
          const back = Buffer.alloc(bytes.length);
          await heap.space.readAsync(address, back);
          assert.deepEqual(back, bytes);
        }
        const roots = heap.roots();
        roots.delete('tree');
        assert.deepEqual(roots, live.roots);
        entries = tree(heap);
        assert.deepEqual(
          new Map(entries.entries()),
          new Map([...live.tree].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
        );
        assert.deepEqual(entries.check().problems, []);

        assert.deepEqual(await heap.check(), { ok: true, problems: [] });
      } finally {
        await heap.close({ checkpoint: false });
        rmSync(path, { force: true });
      }
    }),
    { numRuns: 12 },
  );
});

test('a heap whose creator died before its first checkpoint opens empty; a damaged header is HEAP_CORRUPT', async () => {
  const path = fresh();
  await (await HeapImage.create({ path, size: '64MiB' })).close({ checkpoint: false });
  const heap = await Heap.open({ path, checkpointIntervalMs: 0 });
  assert.equal(heap.stats().allocator.liveObjects, 0);
  heap.setRoot('x', heap.alloc(100));
  await heap.close();

  // Overwrite the header's magic in the image and recommit it through the image layer.
  const image = await HeapImage.open({ path });
  image.space.writeU32(0, 0xbadbad);
  await image.close();
  await assert.rejects(Heap.open({ path }), typedError(ErrorCodes.HEAP_CORRUPT, 'wrong magic', 'heap check'));
});

test('automatic checkpoints: a change is committed within the interval without any call', async () => {
  const path = fresh();
  const heap = await Heap.create({ path, size: '64MiB', checkpointIntervalMs: 20 });
  const start = heap.generation;
  heap.setRoot('x', heap.alloc(10));
  // Bounded wait for the timer's checkpoint (the interval is 20 ms; allow a loaded machine 30 s).
  for (let i = 0; i < 3000 && heap.generation === start; i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(heap.generation > start, 'an automatic checkpoint committed the change');
  const generation = heap.generation;
  await heap.close({ checkpoint: false });
  const again = await Heap.open({ path, checkpointIntervalMs: 0 });
  assert.equal(again.generation, generation);
  assert.notEqual(again.root('x'), 0);
  await again.close();
});

test('fork: a child process opens a fork while the parent keeps writing; each sees only its own writes', async () => {
  const parentPath = fresh();
  const childPath = fresh();
  const parent = await Heap.create({
    path: parentPath,
    size: '256MiB',
    budget: '512KiB',
    checkpointIntervalMs: 0,
  });
  const objects: number[] = [];
  for (let i = 0; i < 200; i++) {
    const address = parent.alloc(1000);
    parent.space.writeU32(address, i);
    objects.push(address);
  }
  const table = parent.alloc(objects.length * 8);
  objects.forEach((address, i) => parent.space.writeF64(table + i * 8, address));
  parent.setRoot('table', table);
  await parent.fork(childPath);
  assert.equal(parent.forks().length, 1);

  // The child (another process) doubles every value and allocates; the parent negates them, concurrently.
  const child = spawn(process.execPath, ['--import', 'tsx', FORK_WRITER, childPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < objects.length; i++) parent.space.writeU32(objects[i]!, 1_000_000 + i + round);
    parent.alloc(5000);
    await parent.checkpoint();
  }
  assert.equal(await exited, 0, output);
  await parent.close();

  const p = await Heap.open({ path: parentPath, checkpointIntervalMs: 0 });
  const c = await Heap.open({ path: childPath, checkpointIntervalMs: 0 });
  assert.equal(c.root('table'), p.root('table'), 'same addresses in both');
  for (let i = 0; i < objects.length; i++) {
    assert.equal(p.space.readU32(objects[i]!), 1_000_000 + i + 4);
    assert.equal(c.space.readU32(objects[i]!), 2 * i);
  }
  assert.equal(c.stats().allocator.liveObjects, 201 + 10);
  assert.equal(p.stats().allocator.liveObjects, 201 + 5);
  assert.deepEqual(await p.check(), { ok: true, problems: [] });
  assert.deepEqual(await c.check(), { ok: true, problems: [] });
  await c.close();
  // Released, the parent may reuse the fork's pages; the fork must no longer be used.
  await p.releaseFork(childPath);
  assert.deepEqual(p.forks(), []);
  await p.close();
});

test('fork refusals: a fork of a fork, an existing path', async () => {
  const parentPath = fresh();
  const childPath = fresh();
  const parent = await Heap.create({ path: parentPath, size: '64MiB', checkpointIntervalMs: 0 });
  await assert.rejects(parent.fork(parentPath), typedError(ErrorCodes.HEAP_EXISTS));
  assert.deepEqual(parent.forks(), [], 'a refused fork pins nothing');
  await parent.fork(childPath);
  const child = await Heap.open({ path: childPath, checkpointIntervalMs: 0 });
  await assert.rejects(child.fork(fresh()), typedError(ErrorCodes.INVALID_ARGUMENT, 'itself a fork'));
  await child.close();
  await parent.close();
});

test('a flipped byte in a stored page: check() names the page', async () => {
  const path = fresh();
  const heap = await Heap.create({ path, size: '64MiB', checkpointIntervalMs: 0 });
  const address = heap.alloc(4096);
  const marker = Buffer.from('this object will be damaged on disk, byte by byte');
  heap.space.write(address, marker);
  await heap.close();
  const fd = openSync(path, 'r+');
  const all = Buffer.alloc(64 * 1024 * 1024);
  const length = readSync(fd, all, 0, all.length, 0);
  const at = all.subarray(0, length).indexOf(marker);
  writeSync(fd, Buffer.from([all[at + 2]! ^ 1]), 0, 1, at + 2);
  closeSync(fd);
  const again = await Heap.open({ path, checkpointIntervalMs: 0 });
  const result = await again.check();
  assert.equal(result.ok, false);
  assert.match(result.problems.join('\n'), /checksum/);
  await again.close({ checkpoint: false });
});

test('compact gives freed space back: the image shrinks and every object survives', async () => {
  const path = fresh();
  const heap = await Heap.create({ path, size: '256MiB', budget: '1MiB', checkpointIntervalMs: 0 });
  const kept: [number, Buffer][] = [];
  const dropped: number[] = [];
  for (let i = 0; i < 60; i++) {
    const address = heap.alloc(64 * 1024);
    const bytes = seededBytes(i, 64 * 1024);
    await heap.space.writeAsync(address, bytes);
    if (i % 6 === 0) kept.push([address, bytes]);
    else dropped.push(address);
  }
  heap.setRoot('first', kept[0]![0]);
  await heap.checkpoint();
  for (const address of dropped) heap.free(address);
  await heap.close();
  const report = await Heap.compact({ path });
  assert.ok(
    report.afterBytes < report.beforeBytes / 3,
    `compacted ${report.beforeBytes} -> ${report.afterBytes}`,
  );
  const again = await Heap.open({ path, checkpointIntervalMs: 0 });
  for (const [address, bytes] of kept) {
    const back = Buffer.alloc(bytes.length);
    await again.space.readAsync(address, back);
    assert.deepEqual(back, bytes);
  }
  assert.equal(again.root('first'), kept[0]![0]);
  assert.deepEqual(await again.check(), { ok: true, problems: [] });
  await again.close();
});

test('collection values read in place from the pager-backed heap decode (msgpackr refuses shared memory natively)', async () => {
  const heap = await Heap.create({ path: fresh(), size: '64MiB', checkpointIntervalMs: 0 });
  const tree = HeapBTree.create(heap, { keys: 'string', values: 'msgpack' });
  // Small enough to stay inline in the node, with strings long enough for msgpackr's native path.
  const value = { a: 'x'.repeat(70), b: 'y'.repeat(90), c: ['z'.repeat(65)] };
  tree.set('k', value);
  assert.deepEqual(tree.get('k'), value);
  await heap.close();
});
