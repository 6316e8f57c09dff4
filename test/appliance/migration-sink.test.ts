/**
 * The region migration's NBD PageSink against a real appliance region over a real NBD
 * connection: whatever pages it is given (data, zero pages, holes; runs, gaps, the partial last
 * page), used as the engine uses it (a refused page is retried after send()), the target ends
 * with exactly those bytes and extents, in one request per run; a failed request fails the sink.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Appliance } from '../../src/appliance/index.js';
import { COPY_INFLIGHT_MAX, COPY_RUN_PAGES_MAX, NbdPageSink } from '../../src/appliance/migration-sink.js';
import { NbdClient } from '../../src/nbd/index.js';

const PAGE = 4096;
/** Whole pages of the target region, plus a partial last page of TAIL bytes. */
const PAGES = 160;
const TAIL = 1000;
const SIZE = PAGES * PAGE + TAIL;

const DATA = 0;
const ZERO = 1;
const HOLE = 2;

function pageBytes(page: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(PAGE);
  let x = (page * 2654435761 + seed * 40503 + 1) >>> 0;
  for (let i = 0; i < PAGE; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = (x >>> 24) | 1; // never a page of zeros
  }
  return bytes;
}

/** Per page of the region (the partial one included): its base:allocation flags. */
function pageFlags(appliance: Appliance, name: string): number[] {
  const flags: number[] = [];
  appliance.registry.require(name).blockStatus(0, SIZE, (length, f) => {
    for (let n = 0; n < Math.ceil(length / PAGE); n++) flags.push(f);
  });
  return flags;
}

test('the NBD sink leaves the target with exactly the pages given, one request per run', async (t) => {
  const target = await Appliance.start({
    memory: '64MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
  });
  t.after(() => target.stop());
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ page: fc.nat({ max: PAGES }), kind: fc.constantFrom(DATA, ZERO, HOLE) }), {
        maxLength: 400,
      }),
      async (drawn) => {
        // Distinct pages, ascending, as the engine gives them.
        const byPage = new Map<number, number>();
        for (const { page, kind } of drawn) byPage.set(page, kind);
        const pages = [...byPage.entries()].sort((x, y) => x[0] - y[0]);
        const name = `r${run++}`;
        const region = await target.registry.create({ name, size: SIZE });
        // Every page starts as data, so that zeroing and trimming show.
        for (let page = 0; page <= PAGES; page++) {
          region.write(page * PAGE, pageBytes(page, 0).subarray(0, Math.min(PAGE, SIZE - page * PAGE)));
        }
        const before = region.stats();
        const client = await NbdClient.connect({ port: target.nbdAddress.port, exportName: name });
        try {
          const sink = new NbdPageSink(client, PAGE, SIZE);
          let refusals = 0;
          for (const [page, kind] of pages) {
            const queue = () =>
              kind === DATA
                ? sink.data(page, pageBytes(page, 1))
                : kind === ZERO
                  ? sink.zero(page)
                  : sink.hole(page);
            while (!queue()) {
              refusals++;
              await sink.send();
            }
          }
          await sink.sync();
          // Twice: a sync with nothing new sent resolves at once.
          await sink.sync();

          // Bytes and extents, page by page.
          const flags = pageFlags(target, name);
          const expected = new Map(pages);
          for (let page = 0; page <= PAGES; page++) {
            const length = Math.min(PAGE, SIZE - page * PAGE);
            const kind = expected.get(page);
            const bytes = Buffer.alloc(length);
            region.read(page * PAGE, bytes);
            const want =
              kind === undefined
                ? pageBytes(page, 0)
                : kind === DATA
                  ? pageBytes(page, 1)
                  : new Uint8Array(PAGE);
            assert.ok(bytes.equals(want.subarray(0, length)), `page ${page} (${kind}) bytes`);
            // The partial last page is zeroed in its frame, not trimmed or mapped to the zero page.
            const partial = length < PAGE;
            const wantFlags = kind === ZERO && !partial ? 2 : kind === HOLE && !partial ? 3 : 0;
            assert.equal(flags[page], wantFlags, `page ${page} (${kind}) flags`);
          }

          // One request per run: a kind change, a gap, or a data run at COPY_RUN_PAGES_MAX pages.
          const runs = [0, 0, 0];
          let previous: [number, number] | undefined;
          let length = 0;
          for (const [page, kind] of pages) {
            const extends_ =
              previous !== undefined &&
              previous[1] === kind &&
              previous[0] + 1 === page &&
              (kind !== DATA || length < COPY_RUN_PAGES_MAX);
            if (extends_) length++;
            else {
              runs[kind]!++;
              length = 1;
            }
            previous = [page, kind];
          }
          const after = region.stats();
          assert.deepEqual(
            [after.writes - before.writes, after.zeroes - before.zeroes, after.trims - before.trims],
            runs,
          );
          assert.equal(sink.bytesSent >= 28 * (runs[0]! + runs[1]! + runs[2]!), true);
          // Nothing is awaited between queue calls unless one is refused: the first COPY_INFLIGHT_MAX
          // runs take every slot, so a page is refused exactly when there are more runs than slots.
          assert.equal(refusals > 0, runs[0]! + runs[1]! + runs[2]! > COPY_INFLIGHT_MAX, 'backpressure');
        } finally {
          await client.disconnect();
          await target.registry.delete(name);
        }
      },
    ),
    { numRuns: 40 },
  );
});

test('a request that fails fails the sink: send and sync throw it', async (t) => {
  const target = await Appliance.start({
    memory: '16MiB',
    nbd: { port: 0 },
    http: { port: 0 },
    defaultRegion: false,
    merge: false,
  });
  t.after(() => target.stop());
  await target.registry.create({ name: 'r', size: SIZE });
  const client = await NbdClient.connect({ port: target.nbdAddress.port, exportName: 'r' });
  const sink = new NbdPageSink(client, PAGE, SIZE);
  assert.ok(sink.data(0, pageBytes(0, 1)));
  await sink.sync();
  client.destroy();
  assert.ok(sink.data(1, pageBytes(1, 1)));
  assert.ok(sink.hole(5));
  await assert.rejects(sink.sync(), /destroyed|closed|disconnect/i);
  await assert.rejects(sink.send(), /destroyed|closed|disconnect/i);
});
