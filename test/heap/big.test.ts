/**
 * A heap many times its budget, filled, checkpointed, reopened and verified: in a file, and on
 * a region of a real appliance process (by NBD URL). The suite runs 512 MiB (file) and 256 MiB
 * (appliance) through a 64 MiB budget; `npm run test:soak` runs 4 GiB of each
 * (HEAP_BIG_FILE_BYTES, HEAP_BIG_REGION_BYTES).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parseSize } from '../../src/size.js';
import { Heap } from '../../src/heap/heap.js';
import { ApplianceProcess } from '../interop/appliance-process.js';

const FILE_BYTES = parseSize(process.env.HEAP_BIG_FILE_BYTES ?? '512MiB');
const REGION_BYTES = parseSize(process.env.HEAP_BIG_REGION_BYTES ?? '256MiB');
const BUDGET = '64MiB';
const PIECE = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'memfabric-big-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Piece i: every 4 KiB page starts with its own address and is filled with a byte from it. */
function piece(address: number, into: Buffer): Buffer {
  for (let at = 0; at < into.length; at += 4096) {
    into.fill(((address + at) / 4096) % 251, at, at + 4096);
    into.writeDoubleLE(address + at, at);
  }
  return into;
}

async function fillCheckpointReopenVerify(path: string, bytes: number, size: string): Promise<void> {
  const heap = await Heap.create({ path, size, budget: BUDGET, checkpointIntervalMs: 0 });
  const object = heap.alloc(bytes);
  heap.setRoot('big', object);
  const buffer = Buffer.alloc(PIECE);
  for (let done = 0; done < bytes; done += PIECE)
    await heap.space.writeAsync(object + done, piece(object + done, buffer));
  const report = await heap.checkpoint();
  assert.ok(report.dirtyPages >= bytes / 4096, `checkpoint covered ${report.dirtyPages} pages`);
  assert.ok(heap.stats().residentBytes <= parseSize(BUDGET));
  await heap.close();

  const started = performance.now();
  const again = await Heap.open({ path, budget: BUDGET, checkpointIntervalMs: 0 });
  const first = again.space.readF64(again.root('big'));
  const reopenMs = performance.now() - started;
  assert.equal(first, object);
  console.log(
    `# ${path.startsWith('nbd') ? 'region' : 'file'} heap of ${bytes / 2 ** 20} MiB: reopen to first read ${reopenMs.toFixed(0)} ms`,
  );
  const back = Buffer.alloc(PIECE);
  for (let done = 0; done < bytes; done += PIECE) {
    await again.space.readAsync(object + done, back);
    if (!back.equals(piece(object + done, buffer)))
      assert.fail(`bytes differ in the piece at ${object + done}`);
  }
  await again.close({ checkpoint: false });
}

test(`a ${FILE_BYTES / 2 ** 20} MiB heap in a file with a 64 MiB budget: filled, checkpointed, reopened, verified`, async () => {
  await fillCheckpointReopenVerify(join(dir, 'big.img'), FILE_BYTES, String(FILE_BYTES * 2));
});

test(`a ${REGION_BYTES / 2 ** 20} MiB heap on an appliance region: filled, checkpointed, reopened, verified`, async () => {
  // The image holds the data, the allocator's descriptors and room for a checkpoint's new copies.
  const regionBytes = 2 * REGION_BYTES + 64 * 2 ** 20;
  const appliance = await ApplianceProcess.start({
    memory: String(regionBytes + 64 * 2 ** 20),
    merge: false,
    args: ['--default-region', ''],
  });
  try {
    const answer = await fetch(`${appliance.httpUrl.replace(/\/$/, '')}/v1/regions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${appliance.token}` },
      body: JSON.stringify({ name: 'heap', size: regionBytes }),
    });
    assert.equal(answer.status, 201, await answer.text());
    await fillCheckpointReopenVerify(
      appliance.uri('heap'),
      REGION_BYTES,
      String(REGION_BYTES + 16 * 2 ** 20),
    );
  } finally {
    await appliance.stop();
  }
});
