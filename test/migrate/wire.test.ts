/**
 * The migration wire format: frames survive any chunking of the stream, damaged or foreign
 * frames are refused, and page batches carry exactly the pages put in (runs merged, data in
 * order), whatever the mix of kinds and whatever the batch limits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  FRAME_HEADER_BYTES,
  FrameReader,
  PAGE_DATA,
  PAGE_HOLE,
  PAGE_ZERO,
  PageBatchWriter,
  encodeFrame,
  readPageBatch,
  type PageKind,
} from '../../src/migrate/wire.js';
import type { MemfabricError } from '../../src/index.js';
import { ErrorCodes } from '../../src/index.js';

function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let at = 0;
  for (const p of points) {
    chunks.push(bytes.subarray(at, p));
    at = p;
  }
  chunks.push(bytes.subarray(at));
  return chunks;
}

test('frames come out whole and in order whatever the chunking of the stream', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({ type: fc.integer({ min: 0, max: 255 }), payload: fc.uint8Array({ maxLength: 300 }) }),
        {
          minLength: 1,
          maxLength: 8,
        },
      ),
      fc.array(fc.nat(), { maxLength: 12 }),
      (messages, cuts) => {
        const stream = Buffer.concat(messages.map((m) => encodeFrame(m.type, m.payload)));
        const seen: { type: number; payload: Buffer }[] = [];
        const reader = new FrameReader((type, payload) => seen.push({ type, payload: Buffer.from(payload) }));
        for (const chunk of split(stream, cuts)) reader.push(chunk);
        assert.equal(reader.buffered, 0);
        assert.deepEqual(
          seen,
          messages.map((m) => ({ type: m.type, payload: Buffer.from(m.payload) })),
        );
      },
    ),
  );
});

test('a flipped bit anywhere in a frame is refused and nothing of it is delivered', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 1, maxLength: 200 }),
      fc.nat(),
      fc.integer({ min: 0, max: 7 }),
      (payload, at, bit) => {
        const frame = encodeFrame(7, payload);
        const index = at % frame.length;
        // Flipping a bit of the flags or the type is not detected by design (not covered by the
        // checksum); every other byte is.
        fc.pre(index !== 5 && index !== 6 && index !== 7);
        frame[index]! ^= 1 << bit;
        let delivered = 0;
        const reader = new FrameReader(() => delivered++);
        let error: unknown;
        try {
          reader.push(frame);
        } catch (caught) {
          error = caught;
        }
        // A damaged length may only make the frame look incomplete: then nothing is delivered either.
        if (error === undefined) assert.ok(reader.buffered > 0);
        else assert.equal((error as MemfabricError).code, ErrorCodes.MIGRATION_PROTOCOL);
        assert.equal(delivered, 0);
      },
    ),
  );
});

test('a peer speaking another version, or an oversized frame, is refused with a message saying why', () => {
  const frame = encodeFrame(1, Buffer.from('x'));
  frame[4] = 9;
  assert.throws(() => new FrameReader(() => undefined).push(frame), /wire version 9/);
  const big = encodeFrame(1, Buffer.alloc(64));
  assert.throws(() => new FrameReader(() => undefined, 32).push(big), /exceeds the 32-byte limit/);
  const reader = new FrameReader(() => undefined);
  assert.throws(() => reader.push(Buffer.from('GET / HTTP/1.1\r\n\r\n')), /MFMG magic/);
  assert.throws(() => reader.push(encodeFrame(1)), /after a malformed frame/);
});

const PAGE = 64;
const kindArb = fc.constantFrom<PageKind>(PAGE_DATA, PAGE_ZERO, PAGE_HOLE);

test('page batches carry exactly the pages added, in as many frames as the limits need', () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.integer({ min: 0, max: 199 }), { minLength: 1, maxLength: 60 }),
      fc.array(kindArb, { minLength: 60, maxLength: 60 }),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 0, max: 12 }),
      (unsorted, kinds, maxDataPages, maxRuns, prefixBytes) => {
        const pages = [...unsorted].sort((a, b) => a - b);
        const writer = new PageBatchWriter({ pageSize: PAGE, maxDataPages, maxRuns, prefixBytes });
        const frames: Buffer[] = [];
        const flush = (): void => {
          writer.prefix.fill(0xee);
          frames.push(Buffer.from(writer.seal(42)));
          writer.reset();
        };
        pages.forEach((page, i) => {
          const kind = kinds[i]!;
          if (!writer.fits(page, kind)) flush();
          const bytes = writer.add(page, kind);
          if (kind === PAGE_DATA) bytes!.fill(page + 1);
          else assert.equal(bytes, undefined);
        });
        flush();
        const got: [number, PageKind][] = [];
        for (const frame of frames) {
          const reader = new FrameReader((type, payload) => {
            assert.equal(type, 42);
            assert.ok(payload.subarray(0, prefixBytes).every((b) => b === 0xee));
            let runs = 0;
            readPageBatch(payload.subarray(prefixBytes), PAGE, 200, (first, count, kind, data) => {
              runs++;
              assert.equal(data.length, kind === PAGE_DATA ? count * PAGE : 0);
              for (let p = 0; p < count; p++) {
                got.push([first + p, kind]);
                if (kind === PAGE_DATA)
                  assert.ok(data.subarray(p * PAGE, (p + 1) * PAGE).every((b) => b === first + p + 1));
              }
            });
            assert.ok(runs <= maxRuns);
          });
          reader.push(frame);
        }
        assert.deepEqual(
          got,
          pages.map((page, i) => [page, kinds[i]]),
        );
      },
    ),
  );
});

test('a batch naming a page outside the space, or with the wrong data length, is refused whole', () => {
  const writer = new PageBatchWriter({ pageSize: PAGE, maxDataPages: 4 });
  writer.add(3, PAGE_DATA)!.fill(1);
  writer.add(9, PAGE_ZERO);
  const payload = writer.seal(1).subarray(FRAME_HEADER_BYTES);
  let visited = 0;
  assert.throws(
    () => readPageBatch(payload, PAGE, 9, () => visited++),
    (error: MemfabricError) =>
      error.code === ErrorCodes.MIGRATION_PROTOCOL && /\[9, 10\) of a 9-page space/.test(error.message),
  );
  assert.equal(visited, 0);
  assert.throws(
    () => readPageBatch(payload.subarray(0, payload.length - 1), PAGE, 10, () => visited++),
    /carries 63 data bytes, its runs need 64/,
  );
  assert.equal(visited, 0);
  assert.equal(
    readPageBatch(payload, PAGE, 10, () => visited++),
    2,
  );
  assert.equal(visited, 2);
});
