/**
 * The 'nbd' page store beyond the shared contract: spec checks, what open refuses (and with
 * which code, the URL in the message), that an export keeps its bytes from one store instance to
 * the next (what the heap's reopen needs), slot offsets, readSlots / inspectNbdStore, discards
 * on an export without WRITE_ZEROES, several connections, and a server that dies under the store.
 * An in-process appliance serves regions (the store is asynchronous, so nothing blocks its
 * event loop); nbdkit plays the other servers.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { NbdClient } from '../../src/nbd/index.js';
import { NbdPageStore, inspectNbdStore, readSlots } from '../../src/tier/nbd-store.js';
import { openPageStore } from '../../src/tier/open-store.js';
import type { StoreSpec } from '../../src/tier/page-store.js';
import { Appliance } from '../../src/appliance/index.js';
import { startAppliance } from '../appliance/harness.js';
import { freePort, spawnServer } from '../nbd/client-servers.js';
import { credentialsDir, makePsk } from '../nbd/tls-credentials.js';

const PAGE_SIZE = 4096;
const REGION_BYTES = 64 * PAGE_SIZE;

let harness: Awaited<ReturnType<typeof startAppliance>>;
let regions = 0;

before(async () => {
  harness = await startAppliance({ memory: '16MiB', defaultRegion: false, merge: false });
});
after(() => harness.appliance.stop());

/** A fresh region of `bytes` on the appliance; its NBD URL. */
async function region(bytes = REGION_BYTES, readOnly = false): Promise<string> {
  const name = `nbd-store-${++regions}`;
  const answer = await harness.call('POST', '/v1/regions', { name, size: bytes, readOnly });
  assert.equal(answer.status, 201, answer.text);
  return `nbd://127.0.0.1:${harness.appliance.nbdAddress.port}/${name}`;
}

async function opened(t: TestContext, spec: StoreSpec, capacity: number): Promise<NbdPageStore> {
  const store = await openPageStore(spec, { pageSize: PAGE_SIZE, capacity });
  assert.ok(store instanceof NbdPageStore);
  t.after(() => store.close());
  return store;
}

function rejectsWith(code: string, ...fragments: string[]) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    for (const fragment of fragments) {
      assert.ok(error.message.includes(fragment), `"${fragment}" in: ${error.message}`);
    }
    return true;
  };
}

async function readSlot(store: NbdPageStore, slot: number): Promise<Buffer> {
  const dst = Buffer.alloc(PAGE_SIZE, 0xa5);
  await store.read(slot, dst);
  return dst;
}

test('a spec the store cannot use is INVALID_ARGUMENT before anything connects', async () => {
  const geometry = { pageSize: PAGE_SIZE, capacity: 4 };
  const url = 'nbd://127.0.0.1:10809/heap';
  const bad: Array<[unknown, string]> = [
    [{ kind: 'nbd' }, 'for example nbd://'],
    [{ kind: 'nbd', url: 'localhost:10809' }, 'no scheme'],
    [{ kind: 'nbd', url: 'nbd+unix:///x?socket=/tmp/s' }, 'TCP only'],
    [{ kind: 'nbd', url: 'nbds://127.0.0.1/heap' }, 'TLS required'],
    [{ kind: 'nbd', url, tls: { ca: 'pem' } }, 'write nbds://'],
    [{ kind: 'nbd', url: 'nbds://127.0.0.1/heap?tls-type=psk', tls: { ca: 'pem' } }, 'tls.psk'],
    [{ kind: 'nbd', url, connections: 0 }, 'connections 0'],
    [{ kind: 'nbd', url, connections: 17 }, 'from 1 to 16'],
    [{ kind: 'nbd', url, offset: -4096 }, 'offset -4096'],
    [{ kind: 'nbd', url, offset: 1.5 }, 'offset 1.5'],
    [{ kind: 'nbd', url, requestTimeoutMs: 0 }, 'requestTimeoutMs 0'],
    [{ kind: 'nbd', url, connectTimeoutMs: -1 }, 'connectTimeoutMs -1'],
  ];
  for (const [spec, fragment] of bad) {
    await assert.rejects(
      openPageStore(spec as StoreSpec, geometry),
      rejectsWith(ErrorCodes.INVALID_ARGUMENT, fragment),
      JSON.stringify(spec),
    );
  }
});

test('open names the URL when the appliance is unreachable or the export unknown', async () => {
  const geometry = { pageSize: PAGE_SIZE, capacity: 4 };
  const closedUrl = `nbd://127.0.0.1:${await freePort()}/heap`;
  await assert.rejects(
    openPageStore({ kind: 'nbd', url: closedUrl, connectTimeoutMs: 5000 }, geometry),
    rejectsWith(ErrorCodes.CONNECTION_CLOSED, closedUrl),
  );
  const unknown = `nbd://127.0.0.1:${harness.appliance.nbdAddress.port}/no-such-region`;
  await assert.rejects(
    openPageStore({ kind: 'nbd', url: unknown }, geometry),
    rejectsWith(ErrorCodes.NOT_FOUND, unknown, "'no-such-region' does not exist"),
  );
});

test('an export too small for the capacity is refused, naming its size and what is needed', async () => {
  const url = await region(10 * PAGE_SIZE);
  await assert.rejects(
    openPageStore({ kind: 'nbd', url }, { pageSize: PAGE_SIZE, capacity: 11 }),
    rejectsWith(
      ErrorCodes.INVALID_ARGUMENT,
      url,
      `holds ${10 * PAGE_SIZE} bytes`,
      `need ${11 * PAGE_SIZE}`,
      'storeSize of at most 40960',
    ),
  );
  // The offset counts: 8 slots fit after 2 pages, 9 do not.
  await assert.rejects(
    openPageStore({ kind: 'nbd', url, offset: 2 * PAGE_SIZE }, { pageSize: PAGE_SIZE, capacity: 9 }),
    rejectsWith(ErrorCodes.INVALID_ARGUMENT, `from byte ${2 * PAGE_SIZE}`, '(8 slots)'),
  );
  const store = await openPageStore(
    { kind: 'nbd', url, offset: 2 * PAGE_SIZE },
    { pageSize: PAGE_SIZE, capacity: 8 },
  );
  assert.equal(store.capacity, 8);
  await store.close();
  await assert.rejects(
    openPageStore({ kind: 'nbd', url, offset: 10 * PAGE_SIZE }, { pageSize: PAGE_SIZE, capacity: 1 }),
    rejectsWith(ErrorCodes.INVALID_ARGUMENT, 'use a larger export'),
  );
});

test('a read-only export is refused with READ_ONLY', async () => {
  const url = await region(REGION_BYTES, true);
  await assert.rejects(
    openPageStore({ kind: 'nbd', url }, { pageSize: PAGE_SIZE, capacity: 4 }),
    rejectsWith(ErrorCodes.READ_ONLY, url, 'writable export'),
  );
});

test('a second store on the same URL sees what the first wrote and flushed', async (t) => {
  const url = await region();
  const first = await openPageStore({ kind: 'nbd', url }, { pageSize: PAGE_SIZE, capacity: 64 });
  const pages = new Map<number, Buffer>([0, 1, 17, 63].map((slot) => [slot, randomBytes(PAGE_SIZE)]));
  await Promise.all([...pages].map(([slot, data]) => first.write(slot, data)));
  await first.discard(17);
  pages.set(17, Buffer.alloc(PAGE_SIZE));
  await first.flush();
  await first.close();

  // Opening does not wipe: every slot reads what was left, never-written ones zeros.
  const second = await opened(t, { kind: 'nbd', url }, 64);
  for (const slot of [0, 1, 2, 17, 40, 63]) {
    const expected = pages.get(slot) ?? Buffer.alloc(PAGE_SIZE);
    assert.ok((await readSlot(second, slot)).equals(expected), `slot ${slot}`);
  }
  // An offset shifts slot numbers by whole pages: slot 0 here is slot 1 above.
  const shifted = await opened(t, { kind: 'nbd', url, offset: PAGE_SIZE }, 63);
  assert.ok((await readSlot(shifted, 0)).equals(pages.get(1)!));
  assert.ok((await readSlot(shifted, 62)).equals(pages.get(63)!));
  // And the helpers see the same bytes.
  const slots = await readSlots({ kind: 'nbd', url }, PAGE_SIZE, 0, 2);
  assert.equal(slots.length, 2 * PAGE_SIZE);
  assert.ok(Buffer.from(slots.subarray(0, PAGE_SIZE)).equals(pages.get(0)!));
  assert.ok(Buffer.from(slots.subarray(PAGE_SIZE)).equals(pages.get(1)!));
  assert.deepEqual(await inspectNbdStore({ kind: 'nbd', url, offset: PAGE_SIZE }, PAGE_SIZE), {
    exportBytes: REGION_BYTES,
    capacity: 63,
    flushes: true,
  });
});

test('readSlots reads nbd stores only, and whole slots inside the export', async () => {
  await assert.rejects(
    readSlots({ kind: 'memory' }, PAGE_SIZE, 0, 2),
    rejectsWith(ErrorCodes.INVALID_ARGUMENT, "'nbd' stores only"),
  );
  const url = await region(4 * PAGE_SIZE);
  for (const [first, count] of [
    [-1, 1],
    [0, 0],
    [0.5, 1],
  ] as const) {
    await assert.rejects(
      readSlots({ kind: 'nbd', url }, PAGE_SIZE, first, count),
      rejectsWith(ErrorCodes.INVALID_ARGUMENT, 'readSlots needs'),
    );
  }
  await assert.rejects(
    readSlots({ kind: 'nbd', url }, PAGE_SIZE, 3, 2),
    rejectsWith(ErrorCodes.INVALID_ARGUMENT, `holds ${4 * PAGE_SIZE} bytes`),
  );
});

test('several connections when the server allows multi-conn, all seeing one export', async (t) => {
  const url = await region();
  const store = await opened(t, { kind: 'nbd', url, connections: 4 }, 64);
  assert.equal(store.connections, 4);
  const pages = Array.from({ length: 64 }, () => randomBytes(PAGE_SIZE));
  await Promise.all(pages.map((data, slot) => store.write(slot, data)));
  await store.flush();
  const backs = await Promise.all(pages.map((_, slot) => readSlot(store, slot)));
  backs.forEach((back, slot) => assert.ok(back.equals(pages[slot]!), `slot ${slot}`));
});

/** nbdkit's memory plugin, with nbdkit filters in front; stopped by PID after the test. */
async function nbdkit(t: TestContext, filters: string[]): Promise<string> {
  const port = await freePort();
  const server = await spawnServer(
    'nbdkit',
    [
      '--foreground',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      ...filters.flatMap((filter) => ['--filter', filter]),
      'memory',
      String(REGION_BYTES),
    ],
    port,
  );
  t.after(() => server.stop());
  return `nbd://127.0.0.1:${port}/`;
}

test('on an export without WRITE_ZEROES, discard writes zeros', async (t) => {
  const url = await nbdkit(t, ['nozero']);
  const probe = await NbdClient.connect({ port: Number(new URL(url).port) });
  assert.equal(probe.transmissionFlags.canWriteZeroes, false, 'the filter hides WRITE_ZEROES');
  await probe.disconnect();
  const store = await opened(t, { kind: 'nbd', url }, 64);
  const kept = randomBytes(PAGE_SIZE);
  await store.write(4, randomBytes(PAGE_SIZE));
  await store.write(5, kept);
  await Promise.all([store.discard(4), store.discard(6)]);
  assert.ok((await readSlot(store, 4)).equals(Buffer.alloc(PAGE_SIZE)));
  assert.ok((await readSlot(store, 5)).equals(kept), 'the neighbour keeps its bytes');
  await store.write(4, kept);
  assert.ok((await readSlot(store, 4)).equals(kept), 'the shared zero page was not written over');
  await store.discard(5);
  assert.ok((await readSlot(store, 4)).equals(kept));
});

test('a server that dies under the store: STORE_FAILED naming the store and slot, cause kept', async (t) => {
  const port = await freePort();
  const server = await spawnServer(
    'nbdkit',
    [
      '--foreground',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      'memory',
      String(REGION_BYTES),
    ],
    port,
  );
  t.after(() => server.stop());
  const url = `nbd://127.0.0.1:${port}/`;
  const store = await opened(t, { kind: 'nbd', url, requestTimeoutMs: 10_000 }, 64);
  await store.write(3, randomBytes(PAGE_SIZE));
  await server.stop(); // SIGKILL, and waits for the exit
  const failed = (slot: number | undefined) => (error: unknown) => {
    rejectsWith(
      ErrorCodes.STORE_FAILED,
      `page store ${url}`,
      slot === undefined ? '' : `slot ${slot}`,
    )(error);
    assert.ok((error as MemfabricError).cause instanceof MemfabricError, 'the NBD error is the cause');
    return true;
  };
  await assert.rejects(store.write(7, randomBytes(PAGE_SIZE)), failed(7));
  await assert.rejects(store.read(3, Buffer.alloc(PAGE_SIZE)), failed(3));
  await assert.rejects(store.discard(9), failed(9));
  await assert.rejects(store.flush(), failed(undefined));
  await store.close(); // still releases everything
  await assert.rejects(store.read(3, Buffer.alloc(PAGE_SIZE)), rejectsWith(ErrorCodes.STORE_CLOSED));
});

test('nbds:// with a PSK reaches a --tls require appliance; a wrong key is MF_TLS naming the URL', async (t) => {
  const psk = makePsk(credentialsDir(t), ['tenant-a']);
  const appliance = await Appliance.start({
    memory: '16MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
    tls: { mode: 'require', psk: psk.file },
  });
  t.after(() => appliance.stop());
  await appliance.registry.create({ name: 'heap-a', size: REGION_BYTES, tenant: 'tenant-a' });
  const url = `nbds://127.0.0.1:${appliance.nbdAddress.port}/heap-a`;
  const key = psk.keys.get('tenant-a')!.toString('hex');
  // The spec crosses into the pager's worker as plain data: use it after a structured clone.
  const spec = structuredClone<StoreSpec>({ kind: 'nbd', url, tls: { psk: { identity: 'tenant-a', key } } });
  const store = await opened(t, spec, 64);
  const data = randomBytes(PAGE_SIZE);
  await store.write(9, data);
  await store.flush();
  assert.ok((await readSlot(store, 9)).equals(data));
  const direct = Buffer.alloc(PAGE_SIZE);
  appliance.registry.require('heap-a').read(9 * PAGE_SIZE, direct);
  assert.ok(direct.equals(data), 'the bytes are in the region, at slot 9');

  const wrong = randomBytes(32).toString('hex');
  await assert.rejects(
    openPageStore(
      { kind: 'nbd', url, tls: { psk: { identity: 'tenant-a', key: wrong } } },
      { pageSize: PAGE_SIZE, capacity: 4 },
    ),
    rejectsWith(ErrorCodes.TLS, url),
  );
});

test('on an export without FLUSH, flush waits for the writes in flight and resolves', async (t) => {
  // nbdkit's eval plugin over a file, with no flush method: the server advertises no FLUSH.
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-noflush-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const image = join(dir, 'image');
  writeFileSync(image, Buffer.alloc(16 * PAGE_SIZE));
  const port = await freePort();
  const server = await spawnServer(
    'nbdkit',
    [
      '--foreground',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      'eval',
      `get_size=echo ${16 * PAGE_SIZE}`,
      `pread=dd if=${image} iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none`,
      `pwrite=dd of=${image} oflag=seek_bytes conv=notrunc seek=$4 status=none`,
      'can_write=exit 0',
    ],
    port,
  );
  t.after(() => server.stop());
  const url = `nbd://127.0.0.1:${port}/`;
  assert.equal((await inspectNbdStore({ kind: 'nbd', url }, PAGE_SIZE)).flushes, false);
  const store = await opened(t, { kind: 'nbd', url }, 16);
  const pages = [randomBytes(PAGE_SIZE), randomBytes(PAGE_SIZE)];
  const writes = pages.map((data, i) => store.write(i + 2, data));
  await store.flush();
  // Resolved after both writes were answered: the bytes are in the file behind the export.
  const file = readFileSync(image);
  assert.ok(file.subarray(2 * PAGE_SIZE, 3 * PAGE_SIZE).equals(pages[0]!));
  assert.ok(file.subarray(3 * PAGE_SIZE, 4 * PAGE_SIZE).equals(pages[1]!));
  await Promise.all(writes);
});

test('a server that stops answering fails the store after requestTimeoutMs, cause MF_TIMEOUT', async (t) => {
  const port = await freePort();
  const server = await spawnServer(
    'nbdkit',
    [
      '--foreground',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      'memory',
      String(REGION_BYTES),
    ],
    port,
  );
  t.after(() => server.stop()); // SIGCONT, then SIGKILL
  const url = `nbd://127.0.0.1:${port}/`;
  const store = await opened(t, { kind: 'nbd', url, requestTimeoutMs: 300 }, 64);
  await store.write(1, randomBytes(PAGE_SIZE));
  process.kill(server.pid, 'SIGSTOP'); // alive, connected, silent
  await stopped(server.pid); // a signal lands asynchronously: a read sent before would be served
  await assert.rejects(store.read(1, Buffer.alloc(PAGE_SIZE)), (error: unknown) => {
    rejectsWith(ErrorCodes.STORE_FAILED, `page store ${url}`, 'slot 1')(error);
    const cause = (error as MemfabricError).cause;
    assert.ok(cause instanceof MemfabricError && cause.code === ErrorCodes.TIMEOUT, String(cause));
    return true;
  });
});

/** Resolves once the kernel reports process `pid` stopped (state T in /proc/PID/stat), bounded. */
async function stopped(pid: number): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('T')) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`process ${pid} did not stop after SIGSTOP`);
}
