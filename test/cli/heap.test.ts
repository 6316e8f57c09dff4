/**
 * `memfabric heap create|info|check|compact` as a real process on real images. The images are
 * built in this process through Heap (objects, roots, forks, frees), then damaged with plain
 * file writes where a test needs a bad one.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Appliance } from '../../src/appliance/index.js';
import { ErrorCodes } from '../../src/errors.js';
import { Heap } from '../../src/heap/heap.js';
import { HeapImage } from '../../src/heap/image.js';
import { formatSize } from '../../src/size.js';
import { seededBytes } from '../fabric/seeded-bytes.js';
import { memfabricCommand } from '../support/cli.js';

// The tree under test, never a possibly stale dist/ (test/support/cli.ts).
const source = memfabricCommand();

const dir = mkdtempSync(join(tmpdir(), 'memfabric-heap-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(dir, `heap-${counter++}.img`);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `memfabric heap ...`; resolves with the exit code and output whatever the code. */
function heap(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [...source, 'heap', ...args],
      { timeout: 120_000 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number') reject(error);
        else resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** The file's bytes and modification time: what a read-only command must leave as they were. */
function snapshot(path: string): { bytes: Buffer; mtimeMs: number } {
  return { bytes: readFileSync(path), mtimeMs: statSync(path).mtimeMs };
}

function assertUntouched(path: string, before: { bytes: Buffer; mtimeMs: number }, what: string): void {
  const now = snapshot(path);
  assert.equal(now.mtimeMs, before.mtimeMs, `${what} changed the mtime of ${path}`);
  assert.ok(now.bytes.equals(before.bytes), `${what} changed the bytes of ${path}`);
}

function assertFails(run: Run, code: string, pattern?: RegExp): void {
  assert.equal(run.code, 2, `${run.stdout}${run.stderr}`);
  assert.match(run.stderr, new RegExp(`^memfabric: .*\\(${code}\\)$`, 'm'));
  if (pattern) assert.match(run.stderr, pattern);
}

test('create, then info as text and JSON; info and check write nothing', async () => {
  const path = fresh();
  const created = await heap('create', path, '--size', '256MiB', '--page-size', '8192');
  assert.equal(created.code, 0, created.stderr);
  assert.equal(created.stdout.trim(), `created ${path}: a 256 MiB heap of 8 KiB pages`);
  assertFails(await heap('create', path), ErrorCodes.HEAP_EXISTS, /already exists/);

  // Objects and roots, written in this process.
  const h = await Heap.open({ path, checkpointIntervalMs: 0 });
  const small = h.alloc(100);
  const big = h.alloc(5 * 8192);
  h.free(h.alloc(300));
  h.alloc(40);
  h.setRoot('small', small);
  h.setRoot('big', big);
  await h.close();
  const reopened = await Heap.open({ path, readOnly: true, checkpointIntervalMs: 0 });
  const expected = reopened.stats();
  const generation = reopened.generation;
  const time = reopened.image.checkpointTime;
  await reopened.close();

  const before = snapshot(path);
  const json = await heap('info', path, '--json');
  assert.equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout);
  assert.equal(info.path, path);
  assert.equal(info.pageSize, 8192);
  assert.equal(info.size, 256 * 1024 * 1024);
  assert.equal(info.generation, generation);
  assert.equal(info.checkpointTime, time);
  assert.equal(info.checkpointDate, new Date(time).toISOString());
  assert.equal(info.empty, false);
  assert.equal(info.fileBytes, before.bytes.length);
  assert.equal(info.storedPages, expected.storedPages);
  assert.equal(info.storedBytes, expected.storedPages * 8192);
  assert.equal(info.imageBytes, expected.imageBytes);
  assert.deepEqual(info.allocator, expected.allocator);
  assert.equal(info.allocator.liveObjects, 3);
  assert.deepEqual(info.roots, { small, big });
  assert.deepEqual(info.forks, []);
  assert.equal(info.base, null);

  const text = await heap('info', path);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, new RegExp(`^heap ${path}$`, 'm'));
  assert.match(text.stdout, /^ {2}page size +8 KiB$/m);
  assert.match(text.stdout, /^ {2}heap size +256 MiB$/m);
  assert.match(
    text.stdout,
    new RegExp(`^ {2}generation +${generation} \\(checkpoint ${info.checkpointDate}\\)$`, 'm'),
  );
  assert.match(
    text.stdout,
    new RegExp(`${expected.storedPages} pages stored \\(${formatSize(info.storedBytes)}\\)`),
  );
  assert.match(
    text.stdout,
    new RegExp(`^ {2}live +3 objects, ${formatSize(expected.allocator.liveBytes)}$`, 'm'),
  );
  assert.match(text.stdout, /fragmentation \d+\.\d%/);
  assert.match(text.stdout, /^ {2}roots +2$/m);
  assert.match(text.stdout, new RegExp(`^ {4}small +${small}$`, 'm'));
  assert.match(text.stdout, new RegExp(`^ {4}big +${big}$`, 'm'));
  assert.match(text.stdout, /^ {2}forks +none$/m);
  assert.doesNotMatch(text.stdout, /fork of/);

  const checked = await heap('check', path);
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);
  assert.equal(checked.stdout.trim(), `${path}: ok (generation ${generation})`);
  assertUntouched(path, before, 'info and check');
});

test('an image never checkpointed reads as an empty heap, and stays untouched', async () => {
  const path = fresh();
  // Its creator died before the first checkpoint: superblock at generation 0, no heap header.
  const image = await HeapImage.create({ path, size: '64MiB' });
  await image.close({ checkpoint: false });
  const before = snapshot(path);
  const info = await heap('info', path, '--json');
  assert.equal(info.code, 0, info.stderr);
  const parsed = JSON.parse(info.stdout);
  assert.equal(parsed.generation, 0);
  assert.equal(parsed.empty, true);
  assert.equal(parsed.allocator, null);
  assert.deepEqual(parsed.roots, {});
  const text = await heap('info', path);
  assert.match(text.stdout, /generation +0 \(never checkpointed: the heap is empty\)/);
  const checked = await heap('check', path, '--json');
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);
  assert.deepEqual(JSON.parse(checked.stdout), { path, generation: 0, ok: true, problems: [] });
  assertUntouched(path, before, 'info and check of an empty image');
  // And it is a heap: opening it for writing formats it.
  const h = await Heap.open({ path, checkpointIntervalMs: 0 });
  assert.equal(h.stats().allocator.liveObjects, 0);
  await h.close();
});

test('check names the page whose stored bytes no longer match their checksum', async () => {
  const path = fresh();
  const h = await Heap.create({ path, size: '64MiB', checkpointIntervalMs: 0 });
  const address = h.alloc(3 * 4096);
  const marker = Buffer.from('heap-cli-test: a marker found once in the image, then damaged');
  h.space.write(address + 5000, marker);
  await h.close();
  assert.deepEqual(JSON.parse((await heap('check', path, '--json')).stdout).ok, true);

  const bytes = readFileSync(path);
  const at = bytes.indexOf(marker);
  assert.ok(at >= 0 && bytes.indexOf(marker, at + 1) < 0, 'the marker is stored exactly once');
  bytes[at + 7]! ^= 0x10;
  writeFileSync(path, bytes);
  const page = Math.floor((address + 5000 + 7) / 4096);

  const checked = await heap('check', path);
  assert.equal(checked.code, 1, checked.stderr);
  assert.match(checked.stdout, /1 problem\(s\)/);
  assert.match(checked.stdout, new RegExp(`^ {2}page ${page} \\(address ${page * 4096}\\) .*checksum`, 'm'));
  const json = JSON.parse((await heap('check', path, '--json')).stdout);
  assert.equal(json.ok, false);
  assert.equal(json.problems.length, 1);
  assert.match(json.problems[0], new RegExp(`^page ${page} .*checksum`));
});

test('a foreign file, a truncated image and a missing one: exit 2 with the error and its code', async () => {
  const foreign = fresh();
  writeFileSync(foreign, seededBytes(7, 20_000));
  const before = snapshot(foreign);
  for (const command of ['info', 'check', 'compact']) {
    assertFails(await heap(command, foreign), ErrorCodes.HEAP_FOREIGN, /not a memfabric heap image/);
  }
  assertUntouched(foreign, before, 'info, check and compact of a foreign file');

  const truncated = fresh();
  const h = await Heap.create({ path: truncated, size: '64MiB', checkpointIntervalMs: 0 });
  for (let i = 0; i < 20; i++) h.space.write(h.alloc(8192), seededBytes(i, 8192));
  await h.close();
  truncateSync(truncated, Math.floor(statSync(truncated).size / 2));
  for (const command of ['info', 'check']) {
    assertFails(await heap(command, truncated), ErrorCodes.HEAP_CORRUPT, /checksum/);
  }

  assertFails(await heap('info', join(dir, 'missing.img')), ErrorCodes.NOT_FOUND, /does not exist/);
});

test('usage errors exit 2', async () => {
  const missingFile = await heap('check');
  assert.equal(missingFile.code, 2);
  assert.match(missingFile.stderr, /missing required argument 'file'/);
  const badSize = await heap('create', fresh(), '--size', 'huge');
  assert.equal(badSize.code, 2);
  assert.match(badSize.stderr, /not a size/);
});

test('compact gives freed space back and the heap still checks ok', async () => {
  const path = fresh();
  const h = await Heap.create({ path, size: '256MiB', budget: '1MiB', checkpointIntervalMs: 0 });
  const kept: [number, Buffer][] = [];
  const dropped: number[] = [];
  for (let i = 0; i < 60; i++) {
    const address = h.alloc(64 * 1024);
    const bytes = seededBytes(100 + i, 64 * 1024);
    await h.space.writeAsync(address, bytes);
    if (i % 6 === 0) kept.push([address, bytes]);
    else dropped.push(address);
  }
  h.setRoot('first', kept[0]![0]);
  await h.checkpoint();
  for (const address of dropped) h.free(address);
  await h.close();

  const beforeBytes = statSync(path).size;
  const compacted = await heap('compact', path, '--budget', '2MiB');
  assert.equal(compacted.code, 0, compacted.stderr);
  const afterBytes = statSync(path).size;
  assert.ok(afterBytes < beforeBytes / 3, `compacted ${beforeBytes} -> ${afterBytes}`);
  assert.match(
    compacted.stdout,
    new RegExp(
      `^${path}: ${formatSize(beforeBytes)} -> ${formatSize(afterBytes)} \\(${(afterBytes / beforeBytes).toFixed(2)}x, \\d+ pages copied\\)$`,
      'm',
    ),
  );
  const checked = await heap('check', path);
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);

  const again = await Heap.open({ path, readOnly: true, checkpointIntervalMs: 0 });
  for (const [address, bytes] of kept) {
    const back = Buffer.alloc(bytes.length);
    await again.space.readAsync(address, back);
    assert.ok(back.equals(bytes), `the object at ${address} survived compaction`);
  }
  assert.equal(again.root('first'), kept[0]![0]);
  await again.close();

  // A second pass has nothing left to give back.
  const second = JSON.parse((await heap('compact', path, '--json')).stdout);
  assert.equal(second.beforeBytes, afterBytes);
  assert.ok(second.afterBytes <= afterBytes);
});

test('info shows the forks a heap pins and the base of a fork; compact refuses a pinned heap', async () => {
  const parentPath = fresh();
  const childPath = fresh();
  const parent = await Heap.create({ path: parentPath, size: '64MiB', checkpointIntervalMs: 0 });
  parent.setRoot('shared', parent.alloc(64));
  // A whole free page run: what compact would trim (and so commit) if it did not refuse first.
  parent.free(parent.alloc(64 * 1024));
  await parent.fork(childPath);
  const [pinned] = parent.forks();
  await parent.close();

  const parentInfo = JSON.parse((await heap('info', parentPath, '--json')).stdout);
  assert.deepEqual(parentInfo.forks, [pinned]);
  assert.equal(parentInfo.base, null);
  const childInfo = JSON.parse((await heap('info', childPath, '--json')).stdout);
  assert.deepEqual(childInfo.base, { path: parentPath, generation: pinned });
  assert.deepEqual(childInfo.roots, parentInfo.roots);
  const childText = (await heap('info', childPath)).stdout;
  assert.match(childText, new RegExp(`^ {2}fork of +${parentPath} at generation ${pinned}$`, 'm'));
  assert.match(
    (await heap('info', parentPath)).stdout,
    new RegExp(`^ {2}forks +1, taken at generation ${pinned}$`, 'm'),
  );
  const childCheck = await heap('check', childPath);
  assert.equal(childCheck.code, 0, childCheck.stdout + childCheck.stderr);

  const before = snapshot(parentPath);
  assertFails(await heap('compact', parentPath), ErrorCodes.INVALID_ARGUMENT, /release them/);
  assert.ok(snapshot(parentPath).bytes.equals(before.bytes), 'a refused compact leaves the image as it was');
  assert.equal(
    JSON.parse((await heap('info', parentPath, '--json')).stdout).generation,
    parentInfo.generation,
  );
});

test('info and check read a heap on an appliance region by NBD URL', async (t) => {
  const appliance = await Appliance.start({
    memory: '64MiB',
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    merge: false,
    defaultRegion: false,
  });
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'heap', size: '32MiB' });
  const url = `nbd://127.0.0.1:${appliance.nbdAddress.port}/heap`;
  const h = await Heap.create({ path: url, size: '8MiB', checkpointIntervalMs: 0 });
  h.setRoot('object', h.alloc(1000));
  const root = h.root('object');
  await h.close();

  const info = await heap('info', url, '--json');
  assert.equal(info.code, 0, info.stderr);
  const parsed = JSON.parse(info.stdout);
  assert.equal(parsed.fileBytes, null);
  assert.equal(parsed.diskBytes, null);
  assert.deepEqual(parsed.roots, { object: root });
  assert.match((await heap('info', url)).stdout, /^ {2}image +on an NBD export, /m);
  const checked = await heap('check', url);
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);
});
