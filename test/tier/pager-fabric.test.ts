/**
 * The pager over a coded appliance store: three real appliance processes (the main thread
 * blocks in Atomics.wait during a fault, so an appliance in this process could never answer),
 * a 4 GiB space with a 64 MiB budget, and the store a 2+1 coded fabric region.
 */
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { ApplianceProcess } from '../interop/appliance-process.js';
import { Pager } from '../../src/tier/pager.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PAGE = 4096;

let appliances: ApplianceProcess[] = [];

before(async () => {
  appliances = await Promise.all(Array.from({ length: 3 }, () => ApplianceProcess.start({ memory: '1GiB' })));
});

after(async () => {
  await Promise.all(appliances.map((appliance) => appliance.stop()));
});

function pattern(page: number, version: number, into: Buffer): Buffer {
  into.fill((page * 13 + version) & 0xff);
  into.writeUInt32LE(page, 0);
  into.writeUInt32LE(version, 4);
  return into;
}

it('pages a 4 GiB space under a 64 MiB budget to a coded (2+1) appliance store, matching a model', async () => {
  const pager = await Pager.open({
    budget: 64 * MiB,
    storeSize: 512 * MiB,
    store: {
      kind: 'fabric',
      appliances: appliances.map((appliance) => appliance.httpUrl),
      token: appliances[0]!.token,
      redundancy: { data: 2, parity: 1 },
    },
  });
  try {
    const space = pager.createSpace({ size: 4 * GiB });
    const model = new Map<number, number>();
    const bytes = Buffer.alloc(PAGE);
    const scratch = Buffer.alloc(PAGE);
    let seed = 4242;
    const random = (n: number): number => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed % n;
    };
    // 20,000 distinct pages (78 MiB) and 4,000 rewrites: a few thousand pages must leave memory.
    const touched: number[] = [];
    for (let i = 0; i < 24_000; i++) {
      const page = i < 20_000 ? random(space.pages) : touched[random(touched.length)]!;
      const version = (model.get(page) ?? 0) + 1;
      if (version === 1) touched.push(page);
      model.set(page, version);
      space.write(page * PAGE, pattern(page, version, bytes));
      if (i % 8 === 7) {
        const check = touched[random(touched.length)]!;
        space.read(check * PAGE, scratch);
        assert.ok(scratch.equals(pattern(check, model.get(check)!, bytes)), `page ${check}`);
      }
    }
    await pager.flush();
    pager.shrink(0); // everything out: every page now comes back from the appliances
    await pager.flush();
    for (const [page, version] of model) {
      space.read(page * PAGE, scratch);
      assert.ok(scratch.equals(pattern(page, version, bytes)), `page ${page} version ${version}`);
    }
    const stats = pager.stats();
    assert.ok(stats.evictions >= model.size, `evictions ${stats.evictions}`);
    assert.ok(stats.store.bytesWritten >= model.size * PAGE, `bytes written ${stats.store.bytesWritten}`);
    assert.ok(stats.residentBytes <= 64 * MiB);
    space.destroy();
    assert.equal(pager.stats().slotsInUse, 0);
  } finally {
    await pager.close();
  }
});
