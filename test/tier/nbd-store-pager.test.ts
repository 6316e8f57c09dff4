/**
 * The pager with store { kind: 'nbd', url } on a plain region of a real appliance process (the
 * main thread blocks in Atomics.wait during a fault, so the appliance must be another process):
 * more pages than the budget go out to the region and come back intact, and what the export
 * cannot hold or the URL cannot name fails Pager.open with a typed error.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { Pager } from '../../src/tier/pager.js';
import { ApplianceProcess } from '../interop/appliance-process.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

let appliance: ApplianceProcess;

before(async () => {
  appliance = await ApplianceProcess.start({
    memory: '128MiB',
    merge: false,
    args: ['--default-region', ''],
  });
});
after(() => appliance.stop());

async function region(name: string, bytes: number): Promise<string> {
  const answer = await fetch(`${appliance.httpUrl.replace(/\/$/, '')}/v1/regions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${appliance.token}` },
    body: JSON.stringify({ name, size: bytes }),
  });
  assert.equal(answer.status, 201, await answer.text());
  return appliance.uri(name);
}

function pattern(page: number, version: number, into: Buffer): Buffer {
  into.fill((page * 29 + version) & 0xff);
  into.writeUInt32LE(page, 0);
  into.writeUInt32LE(version, 4);
  return into;
}

test('a space eight times the budget pages out to the region and back', async () => {
  const url = await region('pager-heap', 48 * MiB);
  const pager = await Pager.open({ budget: 4 * MiB, storeSize: 48 * MiB, store: { kind: 'nbd', url } });
  try {
    const space = pager.createSpace({ size: 32 * MiB });
    const pages = space.pages;
    const bytes = Buffer.alloc(PAGE);
    const scratch = Buffer.alloc(PAGE);
    const versions = new Uint32Array(pages);
    // Every page written once, then every third page again: over 40 MiB through a 4 MiB budget.
    for (let page = 0; page < pages; page++)
      space.write(page * PAGE, pattern(page, (versions[page] = 1), bytes));
    for (let page = 0; page < pages; page += 3) {
      space.write(page * PAGE, pattern(page, ++versions[page]!, bytes));
    }
    await pager.flush();
    const out = pager.stats();
    assert.ok(out.evictions >= pages - (4 * MiB) / PAGE, `evictions ${out.evictions}`);
    assert.ok(out.store.bytesWritten >= (pages - (4 * MiB) / PAGE) * PAGE, `bytes ${out.store.bytesWritten}`);
    assert.ok(out.residentBytes <= 4 * MiB);
    pager.shrink(0); // everything out: every read below faults its page back from the appliance
    await pager.flush();
    for (let page = 0; page < pages; page++) {
      space.read(page * PAGE, scratch);
      assert.ok(
        scratch.equals(pattern(page, versions[page]!, bytes)),
        `page ${page} version ${versions[page]}`,
      );
    }
    assert.ok(pager.stats().store.bytesRead >= pages * PAGE - 4 * MiB, 'the pages came back from the store');
    space.destroy();
    assert.equal(pager.stats().slotsInUse, 0);
  } finally {
    await pager.close();
  }
});

test('Pager.open fails with a typed error when the export is too small or the URL is wrong', async () => {
  const url = await region('pager-small', 8 * MiB);
  await assert.rejects(
    Pager.open({ budget: MiB, storeSize: 16 * MiB, store: { kind: 'nbd', url } }),
    (error) => {
      assert.ok(error instanceof MemfabricError);
      assert.equal(error.code, ErrorCodes.INVALID_ARGUMENT, error.message);
      assert.match(
        error.message,
        new RegExp(`holds ${8 * MiB} bytes.*need ${16 * MiB}.*storeSize of at most ${8 * MiB}`),
      );
      return true;
    },
  );
  await assert.rejects(
    Pager.open({ budget: MiB, storeSize: 8 * MiB, store: { kind: 'nbd', url: appliance.uri('no-such') } }),
    (error) =>
      error instanceof MemfabricError &&
      error.code === ErrorCodes.NOT_FOUND &&
      error.message.includes('no-such'),
  );
  await assert.rejects(
    Pager.open({ budget: MiB, storeSize: 8 * MiB, store: { kind: 'nbd', url: 'nbd:/pager-small' } }),
    (error) =>
      error instanceof MemfabricError &&
      error.code === ErrorCodes.INVALID_ARGUMENT &&
      /for example nbd:\/\//.test(error.message),
  );
});
