/**
 * The pager over an 'nbd' store (a plain region of an appliance process, by URL) beside the
 * same pager over the 'memory' store, in the same run, interleaved:
 *   - 4 KiB page writes into a space 8x the budget, every page once, up to the flush that
 *     makes them durable (each write past the budget evicts a page to the store);
 *   - uniformly random 4 KiB reads of that space after everything was evicted (prefetch off:
 *     about 7 in 8 reads are synchronous faults, each one store read).
 */
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import { Pager } from '../src/tier/pager.js';
import type { StoreSpec } from '../src/tier/page-store.js';
import { median, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

interface Rates {
  writes: number;
  reads: number;
}

async function run(
  store: StoreSpec,
  budget: number,
  spaceBytes: number,
  reads: number,
  seed: number,
): Promise<Rates> {
  const pager = await Pager.open({ budget, storeSize: spaceBytes, store, prefetch: 0 });
  const space = pager.createSpace({ size: spaceBytes });
  const pages = spaceBytes / PAGE;
  const page = Buffer.alloc(PAGE);
  try {
    const writeStart = performance.now();
    for (let i = 0; i < pages; i++) {
      page.writeUInt32LE(i, 0);
      page.writeUInt32LE(seed, 4);
      space.write(i * PAGE, page);
    }
    await pager.flush();
    const writes = pages / ((performance.now() - writeStart) / 1000);
    pager.shrink(0);
    await pager.flush();
    let x = seed | 1;
    const readStart = performance.now();
    for (let i = 0; i < reads; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const p = (x >>> 0) % pages;
      space.read(p * PAGE, page);
      if (page.readUInt32LE(0) !== p) throw new Error(`page ${p} came back wrong`);
    }
    return { writes, reads: reads / ((performance.now() - readStart) / 1000) };
  } finally {
    space.destroy();
    await pager.close();
  }
}

export const nbdStoreSuite: Suite = {
  name: 'nbd-store',
  async run(context: BenchContext): Promise<void> {
    const budget = (context.quick ? 8 : 16) * MiB;
    const spaceBytes = budget * 8;
    const reads = context.quick ? 20_000 : 50_000;
    const appliance = await ApplianceProcess.start({ memory: `${2 * spaceBytes}`, merge: false });
    try {
      const created = await fetch(`${appliance.httpUrl.replace(/\/$/, '')}/v1/regions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${appliance.token}` },
        body: JSON.stringify({ name: 'bench-heap', size: spaceBytes }),
      });
      if (created.status !== 201) throw new Error(`creating the region: ${await created.text()}`);
      const nbd: StoreSpec = { kind: 'nbd', url: appliance.uri('bench-heap') };
      const memory: StoreSpec = { kind: 'memory' };
      await run(nbd, budget, spaceBytes, reads >> 2, 1); // warm-up, untimed
      await run(memory, budget, spaceBytes, reads >> 2, 1);
      const ours: Rates[] = [];
      const base: Rates[] = [];
      for (let r = 0; r < context.repeats; r++) {
        ours.push(await run(nbd, budget, spaceBytes, reads, 2 + r));
        base.push(await run(memory, budget, spaceBytes, reads, 2 + r));
      }
      const label = `${spaceBytes / MiB} MiB space, ${budget / MiB} MiB budget`;
      context.record({
        id: `nbd store: 4K page writes through the pager to a flush (${label})`,
        unit: 'writes/s',
        value: median(ours.map((o) => o.writes)),
        baseline: "the same pager over the 'memory' store",
        baselineValue: median(base.map((b) => b.writes)),
        higherIsBetter: true,
      });
      context.record({
        id: `nbd store: random 4K reads of evicted pages, sync faults (${label})`,
        unit: 'reads/s',
        value: median(ours.map((o) => o.reads)),
        baseline: "the same pager over the 'memory' store",
        baselineValue: median(base.map((b) => b.reads)),
        higherIsBetter: true,
      });
    } finally {
      await appliance.stop();
    }
  },
};
