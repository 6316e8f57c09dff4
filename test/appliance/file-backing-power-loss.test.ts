/**
 * Simulated power loss for file-backed regions (PowerLossLayer, test/appliance/file-layers.ts):
 * random writes, trims, flushes (awaited, or left running while more writes land) and power
 * losses, in which unsynced writes are dropped at random and one is torn. After each loss the
 * region is loaded again from what was durable, and:
 *
 *   - every page not written since the last completed FLUSH began holds what that FLUSH
 *     acknowledged (nothing acknowledged is lost);
 *   - the region holds exactly the durable image's bytes: the extent map hid no page of data.
 *
 * fast-check, seeded: a failure prints the seed and path to replay it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RegionRegistry, type Region } from '../../src/appliance/index.js';
import { FramePool } from '../../src/index.js';
import { PowerLossLayer } from './file-layers.js';

const PAGE = 4096;
const PAGES = 48;
const SIZE = PAGES * PAGE;
const DIR = '/data';

type Step =
  | { kind: 'write'; page: number; count: number; fill: number; small: boolean }
  | { kind: 'trim'; page: number; count: number }
  | { kind: 'flush' }
  | { kind: 'flushInBackground' }
  | { kind: 'tick' }
  | { kind: 'powerLoss' };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      page: fc.nat(PAGES - 1),
      count: fc.integer({ min: 1, max: 3 }),
      fill: fc.integer({ min: 1, max: 255 }),
      small: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('trim' as const),
      page: fc.nat(PAGES - 1),
      count: fc.integer({ min: 1, max: 4 }),
    }),
  },
  { weight: 2, arbitrary: fc.constant({ kind: 'flush' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'flushInBackground' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'tick' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'powerLoss' as const }) },
);

/** A small deterministic PRNG (mulberry32), so a failing run replays exactly. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function boot(layer: PowerLossLayer, create: boolean): Promise<Region> {
  const registry = new RegionRegistry({
    pool: new FramePool({ capacity: 4 * SIZE }),
    dataDir: DIR,
    layer: layer.boot(),
  });
  if (create) return registry.create({ name: 'r', size: SIZE, file: true });
  const [region] = await registry.loadFromDataDir();
  const pending = registry.pendingRegions();
  assert.ok(region, `the region loads after a power loss: ${JSON.stringify(pending)}`);
  return region;
}

test('property: after any power loss, everything a completed FLUSH acknowledged is there and the map hides nothing', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 40 }), fc.integer(), async (steps, seed) => {
      const random = prng(seed);
      const layer = new PowerLossLayer(PAGE);
      let region = await boot(layer, true);
      let model = Buffer.alloc(SIZE); // what the region holds now
      let acked = Buffer.alloc(SIZE); // what the last completed flush acknowledged
      let ackedSeq = 0;
      const modified = new Float64Array(PAGES); // sequence number of each page's last change
      let seq = 1;
      const background: Array<Promise<unknown>> = [];
      const flush = (r: Region): Promise<void> => {
        const snapshot = Buffer.from(model);
        const at = seq++;
        return r.flush().then(() => {
          if (r === region && at > ackedSeq) {
            acked = snapshot;
            ackedSeq = at;
          }
        });
      };
      const check = async (): Promise<void> => {
        layer.powerLoss(random);
        region = await boot(layer, false);
        const back = Buffer.alloc(SIZE);
        region.read(0, back);
        const image = layer.durableBytes(`${DIR}/r.img`)!;
        for (let page = 0; page < PAGES; page++) {
          const at = page * PAGE;
          if (modified[page]! < ackedSeq) {
            assert.ok(
              back.subarray(at, at + PAGE).equals(acked.subarray(at, at + PAGE)),
              `page ${page}: acknowledged bytes lost (${JSON.stringify(layer.lastLoss)})`,
            );
          }
          assert.ok(
            back.subarray(at, at + PAGE).equals(image.subarray(at, at + PAGE)),
            `page ${page}: the loaded region differs from the durable image (the map hid data)`,
          );
        }
        model = back;
        acked = Buffer.from(back);
        ackedSeq = seq++;
      };
      for (const s of steps) {
        if (s.kind === 'write') {
          const offset = s.page * PAGE + (s.small ? 1000 : 0);
          const length = Math.min(s.small ? 100 : s.count * PAGE, SIZE - offset);
          const bytes = Buffer.alloc(length, s.fill);
          region.write(offset, bytes);
          bytes.copy(model, offset);
          const last = Math.floor((offset + length - 1) / PAGE);
          for (let p = s.page; p <= last; p++) modified[p] = seq;
          seq++;
        } else if (s.kind === 'trim') {
          const count = Math.min(s.count, PAGES - s.page);
          region.trim(s.page * PAGE, count * PAGE);
          model.fill(0, s.page * PAGE, (s.page + count) * PAGE);
          for (let p = s.page; p < s.page + count; p++) modified[p] = seq;
          seq++;
        } else if (s.kind === 'flush') {
          await flush(region);
        } else if (s.kind === 'flushInBackground') {
          background.push(flush(region).catch(() => undefined));
        } else if (s.kind === 'tick') {
          for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
        } else {
          await check();
        }
      }
      await check();
      await Promise.all(background);
    }),
    { seed: 0x5eed12, numRuns: 100 },
  );
});
