/**
 * One conformance suite for the NBD client, run against every server (our appliance,
 * nbdkit's memory plugin, qemu-nbd over a raw file): round trips at odd offsets, zeroes,
 * trims seen as holes by block status, and a pipelined model-checked workload.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { NbdClient, NbdExtent } from '../../src/nbd/index.js';
import { STATE_HOLE, STATE_ZERO } from '../../src/nbd/protocol/constants.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A small deterministic PRNG (xorshift32), so a failing workload can be replayed from its seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** Flags of the extent covering byte `at` (relative to the first extent's start). */
export function flagsAt(extents: readonly NbdExtent[], at: number): number {
  let start = 0;
  for (const e of extents) {
    if (at < start + e.length) return e.flags;
    start += e.length;
  }
  return -1;
}

export async function roundTrips(client: NbdClient): Promise<void> {
  // Odd offsets and lengths, straddling page boundaries.
  const cases: Array<[number, number]> = [
    [1, 1],
    [4095, 2],
    [12_345, 10_000],
    [MiB - 3, 7 * KiB + 5],
    [2 * MiB + 511, 65_537],
  ];
  for (const [offset, length] of cases) {
    const data = randomBytes(length);
    await client.write(offset, data);
    assert.deepEqual(await client.read(offset, length), data, `read back ${offset}+${length}`);
    const into = Buffer.alloc(length + 2, 0xee);
    await client.readInto(offset, into.subarray(1, 1 + length));
    assert.deepEqual(into.subarray(1, 1 + length), data);
    assert.equal(into[0], 0xee, 'readInto writes nothing before its view');
    assert.equal(into[length + 1], 0xee, 'readInto writes nothing after its view');
  }
  // A trim at odd offsets: the trimmed bytes may read as anything, the bytes around must not change.
  if (client.transmissionFlags.canTrim) {
    const around = randomBytes(64 * KiB);
    await client.write(5 * MiB, around);
    await client.trim(5 * MiB + 12_345, 10_001);
    const got = await client.read(5 * MiB, 64 * KiB);
    assert.deepEqual(got.subarray(0, 12_345), around.subarray(0, 12_345), 'bytes before a trim are kept');
    assert.deepEqual(got.subarray(22_346), around.subarray(22_346), 'bytes after a trim are kept');
  }
  // FUA write, flush, cache.
  if (client.transmissionFlags.canFua) await client.write(3 * MiB + 1, Buffer.from('fua'), { fua: true });
  if (client.transmissionFlags.canFlush) await client.flush();
  if (client.transmissionFlags.canCache) await client.cache(5, 4 * KiB);

  // writeZeroes in the middle of written data, at odd offsets.
  if (client.transmissionFlags.canWriteZeroes) {
    const base = 3 * MiB + 4 * KiB;
    await client.write(base, Buffer.alloc(20 * KiB, 0x5a));
    await client.writeZeroes(base + 1000, 5000);
    const z = await client.read(base, 20 * KiB);
    assert.ok(z.subarray(0, 1000).every((b) => b === 0x5a));
    assert.ok(z.subarray(1000, 6000).every((b) => b === 0));
    assert.ok(z.subarray(6000).every((b) => b === 0x5a));
    await client.writeZeroes(base, 4 * KiB, { noHole: true });
    assert.ok((await client.read(base, 4 * KiB)).every((b) => b === 0));
  }
}

/** Data written reads as allocated; after a trim of a whole aligned MiB, block status shows a hole. */
export async function holesAfterTrim(client: NbdClient, at = 4 * MiB): Promise<void> {
  assert.ok(client.metaContexts.includes('base:allocation'), 'base:allocation negotiated');
  await client.write(at, Buffer.alloc(MiB, 0x11));
  if (client.transmissionFlags.canFlush) await client.flush();
  const before = await client.blockStatus(at, MiB);
  assert.ok(before.length >= 1);
  assert.equal(before[0].flags & STATE_HOLE, 0, `written data is allocated: ${JSON.stringify(before)}`);
  await client.trim(at, MiB);
  if (client.transmissionFlags.canFlush) await client.flush();
  const after = await client.blockStatus(at, MiB);
  const total = after.reduce((sum, e) => sum + e.length, 0);
  assert.ok(total > 0 && total <= MiB, 'extents cover a prefix of the range');
  assert.ok(
    (flagsAt(after, 0) & STATE_HOLE) !== 0 && (flagsAt(after, MiB / 2) & STATE_HOLE) !== 0,
    `a trimmed MiB is a hole: ${JSON.stringify(after)}`,
  );
  assert.ok((flagsAt(after, 0) & STATE_ZERO) !== 0, 'and reads as zero');
  assert.ok(
    (await client.read(at, MiB)).every((b) => b === 0),
    'a trimmed hole reads as zeros here',
  );
  const one = await client.blockStatus(at, MiB, { reqOne: true });
  assert.equal(one.length, 1);
  assert.ok(one[0].length <= MiB);
}

/**
 * `count` pipelined requests (writes, reads, writeZeroes, flushes, cache, block status) over
 * the first `span` bytes, many in flight at once, verified against a model Buffer. Requests on
 * overlapping ranges are never in flight together (the server may run them in any order), so
 * the model is exact: a request that overlaps one in flight first waits for it.
 */
export async function pipelinedWorkload(
  client: NbdClient,
  seed: number,
  count = 1000,
  span = MiB,
  pipelinedMin = 16,
): Promise<number> {
  const random = rng(seed);
  const model = Buffer.from(await client.read(0, span));
  const inflight: Array<{ start: number; end: number; done: Promise<unknown> }> = [];
  const all: Promise<unknown>[] = [];
  let maxInFlight = 0;
  const flags = client.transmissionFlags;
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(random() * Math.min(span / 4, random() < 0.1 ? 256 * KiB : 8 * KiB));
    const offset = Math.floor(random() * (span - length));
    const end = offset + length;
    const conflicts = inflight.filter((r) => r.start < end && offset < r.end).map((r) => r.done);
    if (conflicts.length > 0) await Promise.all(conflicts);
    const kind = random();
    let done: Promise<unknown>;
    if (kind < 0.4) {
      const data = randomBytes(length);
      data.copy(model, offset);
      done = client.write(offset, data);
    } else if (kind < 0.8) {
      const expected = Buffer.from(model.subarray(offset, end));
      done = client.read(offset, length).then((got) => {
        if (!got.equals(expected))
          assert.fail(`request ${i}: read ${offset}+${length} differs from the model`);
      });
    } else if (kind < 0.9 && flags.canWriteZeroes) {
      model.fill(0, offset, end);
      done = client.writeZeroes(offset, length);
    } else if (kind < 0.95 && flags.canFlush) {
      done = client.flush();
    } else if (kind < 0.97 && flags.canCache) {
      done = client.cache(offset, length);
    } else if (client.metaContexts.length > 0) {
      done = client.blockStatus(offset, length).then((extents) => {
        assert.ok(extents.length >= 1);
        assert.ok(extents.reduce((s, e) => s + e.length, 0) <= length);
      });
    } else {
      done = client.read(offset, 1);
    }
    const entry = { start: offset, end, done };
    inflight.push(entry);
    all.push(done);
    void done.then(
      () => inflight.splice(inflight.indexOf(entry), 1),
      () => undefined,
    );
    maxInFlight = Math.max(maxInFlight, client.inFlight + client.queued);
  }
  await Promise.all(all);
  assert.ok(maxInFlight >= pipelinedMin, `requests were pipelined (at most ${maxInFlight} in flight)`);
  assert.deepEqual(await client.read(0, span), model, 'the export ends up as the model says');
  return maxInFlight;
}
