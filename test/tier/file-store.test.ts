/**
 * The file store beyond the shared contract: its on-disk header, which files it accepts and
 * which it refuses (leaving them untouched), and I/O faults injected through a FileLayer
 * double — short reads and writes, EIO, a file cut short behind the store's back.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, type MemfabricError } from '../../src/index.js';
import { nodeFileLayer, type FileLayer, type FileLayerHandle } from '../../src/tier/file-layer.js';
import { FilePageStore, SWAP_FORMAT_VERSION } from '../../src/tier/file-store.js';
import { typedError } from '../typed-error.js';

const PAGE_SIZE = 4096;
const CAPACITY = 16;

function tempPath(t: TestContext, name = 'store.swap'): string {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-file-store-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, name);
}

async function openStore(
  t: TestContext,
  path: string,
  extra: { pageSize?: number; capacity?: number; layer?: FileLayer } = {},
): Promise<FilePageStore> {
  const store = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY, ...extra });
  t.after(() => store.close());
  return store;
}

function eio(syscall: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`EIO: i/o error, ${syscall}`), { code: 'EIO', errno: -5, syscall });
}

/** The real file system, with short transfers and failures where a test asks for them. */
class FaultyLayer implements FileLayer {
  /** Most bytes one read / write call moves. */
  readBytesMax = Infinity;
  writeBytesMax = Infinity;
  /** Return a number (bytes to pretend were moved) or an Error to throw; undefined: do it for real. */
  onRead: ((position: number, length: number) => number | Error | undefined) | undefined;
  onWrite: ((position: number, length: number) => number | Error | undefined) | undefined;
  failDatasync = false;
  failTruncate = false;
  /** Offer a blocking readSync too (the real layer does; the store then reads through it). */
  syncReads = false;
  reads = 0;
  blockingReads = 0;
  writes = 0;
  /** Handles opened and not yet closed. */
  openHandles = 0;

  async open(path: string, flags: string): Promise<FileLayerHandle> {
    const real = await nodeFileLayer.open(path, flags);
    this.openHandles++;
    const readSync = (buffer: Uint8Array, offset: number, length: number, position: number): number => {
      this.reads++;
      this.blockingReads++;
      const fault = this.onRead?.(position, length);
      if (fault instanceof Error) throw fault;
      if (fault !== undefined) return fault;
      return real.readSync!(buffer, offset, Math.min(length, this.readBytesMax), position);
    };
    return {
      ...(this.syncReads ? { readSync } : {}),
      read: async (buffer, offset, length, position) => {
        this.reads++;
        const fault = this.onRead?.(position, length);
        if (fault instanceof Error) throw fault;
        if (fault !== undefined) return { bytesRead: fault };
        return real.read(buffer, offset, Math.min(length, this.readBytesMax), position);
      },
      write: async (buffer, offset, length, position) => {
        this.writes++;
        const fault = this.onWrite?.(position, length);
        if (fault instanceof Error) throw fault;
        if (fault !== undefined) return { bytesWritten: fault };
        return real.write(buffer, offset, Math.min(length, this.writeBytesMax), position);
      },
      truncate: async (length) => {
        if (this.failTruncate) throw eio('ftruncate');
        await real.truncate(length);
      },
      datasync: async () => {
        if (this.failDatasync) throw eio('fdatasync');
        await real.datasync();
      },
      close: async () => {
        this.openHandles--;
        await real.close();
      },
    };
  }
}

// ---- the file format ----------------------------------------------------------------------

test('a new swap file has a one-page header and slot s at (s + 1) · pageSize', async (t) => {
  const path = tempPath(t);
  const store = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY });
  assert.equal(store.name, `file ${path}`);
  assert.equal(statSync(path).size, PAGE_SIZE, 'the header page only: slots take disk as they are written');
  const data = randomBytes(PAGE_SIZE);
  await store.write(2, data);
  await store.flush();
  const file = readFileSync(path);
  assert.equal(file.length, 4 * PAGE_SIZE);
  assert.equal(file.subarray(0, 8).toString('latin1'), 'MFSWAP\0\0');
  assert.equal(file.readUInt32LE(8), SWAP_FORMAT_VERSION);
  assert.equal(file.readUInt32LE(12), PAGE_SIZE);
  assert.equal(file.readBigUInt64LE(16), BigInt(CAPACITY));
  assert.ok(
    file.subarray(24, PAGE_SIZE).every((byte) => byte === 0),
    'the header is zero padded',
  );
  assert.ok(file.subarray(3 * PAGE_SIZE).equals(data));
  await store.close();
  assert.equal(statSync(path).size, PAGE_SIZE, 'close gives the slots back to the file system');
});

test('a foreign file is refused and left byte-for-byte unchanged', async (t) => {
  const path = tempPath(t, 'precious.db');
  const layer = new FaultyLayer();
  for (const content of [
    randomBytes(3 * PAGE_SIZE),
    Buffer.from('abc'),
    Buffer.from('MFSWAX\0\0' + 'x'.repeat(100)),
  ]) {
    writeFileSync(path, content);
    await assert.rejects(
      FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY, layer }),
      typedError(ErrorCodes.CORRUPT_FILE, path, 'not a memfabric swap file', 'untouched'),
    );
    assert.ok(readFileSync(path).equals(content), 'not one byte changed');
    assert.equal(layer.openHandles, 0, 'the refused file is closed again');
  }
});

test('a truncated header is refused and left unchanged', async (t) => {
  const path = tempPath(t);
  const store = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY });
  await store.close();
  const header = readFileSync(path);
  for (const length of [5, 12, 23]) {
    writeFileSync(path, header.subarray(0, length));
    const before = readFileSync(path);
    await assert.rejects(
      FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY }),
      typedError(ErrorCodes.CORRUPT_FILE, path, 'truncated', `${length} of 24`),
    );
    assert.ok(readFileSync(path).equals(before));
  }
});

test('a swap file of another page size or format version is refused and left unchanged', async (t) => {
  const path = tempPath(t);
  await (await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY })).close();
  const ours = readFileSync(path);
  await assert.rejects(
    FilePageStore.open({ path, pageSize: 2 * PAGE_SIZE, capacity: CAPACITY }),
    typedError(ErrorCodes.CORRUPT_FILE, path, `${PAGE_SIZE}-byte pages, not ${2 * PAGE_SIZE}`),
  );
  assert.ok(readFileSync(path).equals(ours));
  const future = Buffer.from(ours);
  future.writeUInt32LE(SWAP_FORMAT_VERSION + 1, 8);
  writeFileSync(path, future);
  await assert.rejects(
    FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    typedError(ErrorCodes.CORRUPT_FILE, path, `version ${SWAP_FORMAT_VERSION + 1}`),
  );
  assert.ok(readFileSync(path).equals(future));
});

test('our own file is reused, starting empty, with a new capacity', async (t) => {
  const path = tempPath(t);
  const first = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY });
  await first.write(0, randomBytes(PAGE_SIZE));
  await first.write(5, randomBytes(PAGE_SIZE));
  await first.flush();
  // A crash: the store is not closed, its pages stay in the file.
  assert.equal(statSync(path).size, 7 * PAGE_SIZE);
  const second = await openStore(t, path, { capacity: 64 });
  assert.equal(statSync(path).size, PAGE_SIZE, 'the pages of the earlier run are dropped');
  assert.equal(readFileSync(path).readBigUInt64LE(16), 64n);
  const back = Buffer.alloc(PAGE_SIZE, 1);
  await second.read(5, back);
  assert.ok(
    back.every((byte) => byte === 0),
    'swap does not survive a restart',
  );
  const data = randomBytes(PAGE_SIZE);
  await second.write(63, data);
  await second.read(63, back);
  assert.ok(back.equals(data));
  await first.close();
});

test('an empty existing file is taken (nothing in it to lose)', async (t) => {
  const path = tempPath(t);
  writeFileSync(path, '');
  const store = await openStore(t, path);
  assert.equal(readFileSync(path).subarray(0, 6).toString(), 'MFSWAP');
  await store.write(1, randomBytes(PAGE_SIZE));
});

// ---- paths the user passes: MF_BAD_PATH naming them, the system error as cause -------------

function badPath(...fragments: string[]) {
  return (error: unknown): boolean => {
    typedError(ErrorCodes.BAD_PATH, ...fragments)(error);
    assert.ok((error as MemfabricError).cause instanceof Error, 'the system error is kept as cause');
    return true;
  };
}

test('a swap file in a missing directory is BAD_PATH naming the directory and what to do', async (t) => {
  const dir = join(tempPath(t), 'no-such-dir');
  const path = join(dir, 'x.swap');
  await assert.rejects(
    FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    badPath(path, `directory ${dir} does not exist`, 'create it'),
  );
});

test('a swap file path that is a directory, or under a file, is BAD_PATH naming it', async (t) => {
  const dir = tempPath(t, 'a-directory');
  mkdirSync(dir);
  await assert.rejects(
    FilePageStore.open({ path: dir, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    badPath(dir, 'is a directory'),
  );
  const file = tempPath(t, 'a-file');
  writeFileSync(file, 'x');
  const under = join(file, 'x.swap');
  await assert.rejects(
    FilePageStore.open({ path: under, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    badPath(under, 'not a directory'),
  );
  assert.equal(readFileSync(file, 'utf8'), 'x', 'the file in the way is untouched');
});

test(
  'a swap file in a directory this process may not write is BAD_PATH naming it',
  { skip: process.getuid?.() === 0 ? 'root may write anywhere' : false },
  async (t) => {
    const dir = tempPath(t, 'read-only');
    mkdirSync(dir, { mode: 0o500 });
    const path = join(dir, 'x.swap');
    await assert.rejects(
      FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY }),
      badPath(path, 'cannot be opened for writing', 'permissions'),
    );
  },
);

test('a temporary swap file: unlinked as soon as it is open, yet it stores pages', async (t) => {
  const dir = tempPath(t, 'swapdir');
  mkdirSync(dir);
  const store = await FilePageStore.open({ directory: dir, pageSize: PAGE_SIZE, capacity: CAPACITY });
  t.after(() => store.close());
  assert.equal(store.temporary, true);
  assert.ok(store.path.startsWith(dir), store.path);
  assert.deepEqual(readdirSync(dir), [], 'no name left in the directory');
  const data = randomBytes(PAGE_SIZE);
  await store.write(5, data);
  await store.flush();
  const back = Buffer.alloc(PAGE_SIZE);
  await store.read(5, back);
  assert.ok(back.equals(data));
  await store.close();
  assert.deepEqual(readdirSync(dir), []);
});

test('a temporary swap file directory that is missing or a file is BAD_PATH naming it', async (t) => {
  const missing = tempPath(t, 'nowhere');
  await assert.rejects(
    FilePageStore.open({ directory: missing, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    badPath(`swap directory ${missing} does not exist`),
  );
  const file = tempPath(t, 'plain-file');
  writeFileSync(file, '');
  await assert.rejects(
    FilePageStore.open({ directory: file, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    typedError(ErrorCodes.BAD_PATH, `swap directory ${file} is a file`),
  );
  await assert.rejects(
    FilePageStore.open({ directory: file, path: file, pageSize: PAGE_SIZE, capacity: CAPACITY }),
    typedError(ErrorCodes.INVALID_ARGUMENT, 'either path'),
  );
});

// ---- faults through the FileLayer ---------------------------------------------------------

for (const syncReads of [false, true]) {
  test(`short reads and short writes are completed by looping${syncReads ? ' (blocking reads)' : ''}`, async (t) => {
    const layer = new FaultyLayer();
    layer.syncReads = syncReads;
    const store = await openStore(t, tempPath(t), { layer });
    layer.readBytesMax = 1000; // not a divisor of the page: the last piece is short too
    layer.writeBytesMax = 333;
    const pages = Array.from({ length: 4 }, () => randomBytes(PAGE_SIZE));
    const writesBefore = layer.writes;
    await Promise.all(pages.map((data, slot) => store.write(slot * 5, data)));
    assert.equal(layer.writes - writesBefore, 4 * Math.ceil(PAGE_SIZE / 333), 'every write was cut short');
    const readsBefore = layer.reads;
    for (const [slot, data] of pages.entries()) {
      const back = Buffer.alloc(PAGE_SIZE);
      await store.read(slot * 5, back);
      assert.ok(back.equals(data), `slot ${slot * 5}`);
    }
    assert.equal(layer.reads - readsBefore, 4 * Math.ceil(PAGE_SIZE / 1000), 'every read was cut short');
    assert.equal(
      layer.blockingReads > 0,
      syncReads,
      'the store reads through readSync when the layer has it',
    );
  });
}

test('an EIO on write is STORE_FAILED naming the path and the slot; the slot then reads as zeros', async (t) => {
  const path = tempPath(t);
  const layer = new FaultyLayer();
  const store = await openStore(t, path, { layer });
  const old = randomBytes(PAGE_SIZE);
  await store.write(3, old);
  layer.writeBytesMax = 1024;
  // The first quarter of the page reaches the file, then the disk fails.
  layer.onWrite = (position) =>
    position > 4 * PAGE_SIZE && position < 5 * PAGE_SIZE ? eio('write') : undefined;
  await assert.rejects(
    store.write(3, randomBytes(PAGE_SIZE)),
    (error: unknown) =>
      typedError(ErrorCodes.STORE_FAILED, path, 'slot 3', 'EIO')(error) &&
      (error as MemfabricError).cause instanceof Error &&
      ((error as MemfabricError).cause as NodeJS.ErrnoException).code === 'EIO',
  );
  const back = Buffer.alloc(PAGE_SIZE, 9);
  await store.read(3, back);
  assert.ok(
    back.every((byte) => byte === 0),
    'neither the old page nor a mixture of two',
  );
  const other = randomBytes(PAGE_SIZE);
  await store.write(4, other);
  await store.read(4, back);
  assert.ok(back.equals(other), 'other slots still work');
});

test('a write the file system takes no byte of is STORE_FAILED, not a hang', async (t) => {
  const layer = new FaultyLayer();
  const store = await openStore(t, tempPath(t), { layer });
  layer.onWrite = () => 0;
  await assert.rejects(
    store.write(1, randomBytes(PAGE_SIZE)),
    typedError(ErrorCodes.STORE_FAILED, 'slot 1', 'short write'),
  );
});

test('a short read past end of file (the file cut behind our back) is STORE_FAILED', async (t) => {
  const path = tempPath(t);
  const store = await openStore(t, path);
  await store.write(6, randomBytes(PAGE_SIZE));
  const two = randomBytes(PAGE_SIZE);
  await store.write(2, two);
  truncateSync(path, 7 * PAGE_SIZE + 100); // slot 6 keeps 100 bytes
  await assert.rejects(
    store.read(6, Buffer.alloc(PAGE_SIZE)),
    typedError(ErrorCodes.STORE_FAILED, path, 'slot 6', 'short read past end of file'),
  );
  const back = Buffer.alloc(PAGE_SIZE);
  await store.read(2, back); // still inside the file
  assert.ok(back.equals(two), 'a slot inside the file reads its bytes');
});

test('a read that hits end of file through the layer, an EIO on read or on datasync are STORE_FAILED', async (t) => {
  const path = tempPath(t);
  const layer = new FaultyLayer();
  const store = await openStore(t, path, { layer });
  await store.write(0, randomBytes(PAGE_SIZE));
  layer.readBytesMax = 512;
  let calls = 0;
  layer.onRead = () => (++calls === 3 ? 0 : undefined);
  await assert.rejects(
    store.read(0, Buffer.alloc(PAGE_SIZE)),
    typedError(ErrorCodes.STORE_FAILED, 'slot 0', `ends at byte ${PAGE_SIZE + 1024}`),
  );
  layer.onRead = () => eio('read');
  await assert.rejects(
    store.read(0, Buffer.alloc(PAGE_SIZE)),
    typedError(ErrorCodes.STORE_FAILED, path, 'slot 0', 'EIO'),
  );
  layer.failDatasync = true;
  await assert.rejects(store.flush(), typedError(ErrorCodes.STORE_FAILED, path, 'flush', 'EIO'));
});

test('unwritten and discarded slots read as zeros without I/O', async (t) => {
  const layer = new FaultyLayer();
  const store = await openStore(t, tempPath(t), { layer });
  await store.write(9, randomBytes(PAGE_SIZE));
  const writes = layer.writes;
  await store.discard(9);
  const reads = layer.reads;
  const back = Buffer.alloc(PAGE_SIZE, 7);
  await store.read(9, back);
  await store.read(10, back);
  assert.equal(layer.reads, reads);
  assert.equal(layer.writes, writes);
  assert.ok(back.every((byte) => byte === 0));
});

test('an EIO while reading the header on open is STORE_FAILED and closes the file', async (t) => {
  const path = tempPath(t);
  const layer = new FaultyLayer();
  layer.onRead = () => eio('read');
  await assert.rejects(
    FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY, layer }),
    typedError(ErrorCodes.STORE_FAILED, path, 'EIO'),
  );
  assert.equal(layer.openHandles, 0);
});

for (const syncReads of [false, true]) {
  test(`a layer that claims more bytes than asked, or a negative count, is STORE_FAILED${syncReads ? ' (blocking reads)' : ''}`, async (t) => {
    const layer = new FaultyLayer();
    layer.syncReads = syncReads;
    const store = await openStore(t, tempPath(t), { layer });
    const data = randomBytes(PAGE_SIZE);
    await store.write(2, data);
    // A read that reports one byte more than it was asked for (after a first short piece).
    let calls = 0;
    layer.onRead = (_position, length) => (++calls === 2 ? length + 1 : undefined);
    layer.readBytesMax = 1000;
    await assert.rejects(
      store.read(2, Buffer.alloc(PAGE_SIZE)),
      typedError(
        ErrorCodes.STORE_FAILED,
        'slot 2',
        `reported ${PAGE_SIZE - 1000 + 1} bytes read of ${PAGE_SIZE - 1000}`,
      ),
    );
    layer.onRead = () => -1;
    await assert.rejects(
      store.read(2, Buffer.alloc(PAGE_SIZE)),
      typedError(ErrorCodes.STORE_FAILED, 'reported -1'),
    );
    // Exactly what was asked, in one piece or several, is fine.
    layer.onRead = undefined;
    const back = Buffer.alloc(PAGE_SIZE);
    await store.read(2, back);
    assert.ok(back.equals(data));
    layer.readBytesMax = Infinity;
    await store.read(2, back);
    assert.ok(back.equals(data));

    // Writes: more than asked, or negative, are refused the same way and the slot reads as zeros.
    layer.onWrite = (_position, length) => length + 1;
    await assert.rejects(
      store.write(2, data),
      typedError(ErrorCodes.STORE_FAILED, 'slot 2', 'took 4097 of 4096'),
    );
    await store.read(2, back);
    assert.ok(back.every((byte) => byte === 0));
    layer.onWrite = () => -5;
    await assert.rejects(store.write(3, data), typedError(ErrorCodes.STORE_FAILED, 'slot 3', 'took -5'));
    // The same on a later round, after a short first piece; the message says where.
    let rounds = 0;
    layer.writeBytesMax = 1000;
    layer.onWrite = (_position, length) => (++rounds === 2 ? length + 1 : undefined);
    await assert.rejects(
      store.write(4, data),
      typedError(
        ErrorCodes.STORE_FAILED,
        'slot 4',
        `took ${PAGE_SIZE - 1000 + 1} of ${PAGE_SIZE - 1000} bytes at ${5 * PAGE_SIZE + 1000}`,
      ),
    );
    // A write of exactly the rest in the last piece completes.
    layer.onWrite = undefined;
    layer.writeBytesMax = PAGE_SIZE / 2;
    await store.write(3, data);
    await store.read(3, back);
    assert.ok(back.equals(data));
  });
}

test('each slot has its own written bit: neighbours across a byte of the bitmap stay apart', async (t) => {
  const layer = new FaultyLayer();
  const store = await openStore(t, tempPath(t), { layer });
  const pages = new Map<number, Buffer>();
  for (const slot of [0, 6, 7, 8, 9, 15]) {
    const data = randomBytes(PAGE_SIZE);
    await store.write(slot, data);
    pages.set(slot, data);
  }
  await store.discard(8);
  pages.delete(8);
  await store.discard(1); // never written: changes nothing
  const reads = layer.reads;
  const back = Buffer.alloc(PAGE_SIZE);
  for (let slot = 0; slot < CAPACITY; slot++) {
    back.fill(0xee);
    await store.read(slot, back);
    const expected = pages.get(slot) ?? Buffer.alloc(PAGE_SIZE);
    assert.ok(back.equals(expected), `slot ${slot}`);
  }
  assert.equal(layer.reads - reads, pages.size, 'only written slots were read from the file');
});

test('close closes the file, and a failure to truncate it is STORE_FAILED naming the path (the file is closed still)', async (t) => {
  const path = tempPath(t);
  const layer = new FaultyLayer();
  const store = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY, layer });
  await store.write(0, randomBytes(PAGE_SIZE));
  await store.close();
  assert.equal(layer.openHandles, 0, 'closed');
  const failing = await FilePageStore.open({ path, pageSize: PAGE_SIZE, capacity: CAPACITY, layer });
  await failing.write(0, randomBytes(PAGE_SIZE));
  layer.failTruncate = true;
  await assert.rejects(failing.close(), typedError(ErrorCodes.STORE_FAILED, path, 'truncating', 'EIO'));
  assert.equal(layer.openHandles, 0, 'closed after the failure too');
});
