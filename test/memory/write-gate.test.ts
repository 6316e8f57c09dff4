/**
 * The write-path hook a live migration uses: it sees each page as it becomes dirty in an
 * epoch (not every write), and a refusal from it changes nothing, for bulk and scalar writes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError, type WriteGate } from '../../src/index.js';

const PAGE = 4096;

function setup(): {
  space: AddressSpace;
  dirtied: number[];
  admitted: { n: number };
  gate: WriteGate & { closed: boolean };
} {
  const pool = new FramePool({ pageSize: PAGE, capacity: '1MiB' });
  const space = new AddressSpace(pool, { size: '64KiB' });
  const dirtied: number[] = [];
  const admitted = { n: 0 };
  const gate = {
    closed: false,
    admit(): void {
      admitted.n++;
      if (gate.closed) throw new MemfabricError(ErrorCodes.MIGRATING, 'closed');
    },
    dirtied(_space: AddressSpace, page: number): void {
      if (gate.closed) throw new MemfabricError(ErrorCodes.MIGRATING, 'closed');
      dirtied.push(page);
    },
  };
  return { space, dirtied, admitted, gate };
}

test('the gate sees a page once per epoch as it becomes dirty, not every write', () => {
  const { space, dirtied, admitted, gate } = setup();
  space.writeU32(0, 1);
  space.writeGate = gate;
  space.advanceEpoch();
  for (let i = 0; i < 100; i++) space.writeU32(8 * (i % 4), i);
  space.write(PAGE * 2 + 10, new Uint8Array(PAGE)); // pages 2 and 3
  space.writeU32(PAGE * 2, 7); // page 2 already dirty this epoch
  assert.deepEqual(dirtied, [0, 2, 3]);
  assert.equal(admitted.n, 1);
  space.advanceEpoch();
  space.writeU32(4, 1);
  space.writeZeroes(PAGE * 4, PAGE * 3);
  assert.deepEqual(dirtied, [0, 2, 3, 0, 4]);
  assert.equal(admitted.n, 2);
  space.writeGate = undefined;
  space.writeU32(PAGE * 9, 1);
  assert.deepEqual(dirtied, [0, 2, 3, 0, 4]);
});

test('a write the gate refuses changes nothing, bulk or scalar', () => {
  const { space, gate } = setup();
  const before = new Uint8Array(PAGE * 3).fill(5);
  space.write(0, before);
  space.writeGate = gate;
  gate.closed = true;
  space.advanceEpoch(); // every page's next write now takes the slow path
  const refused = (fn: () => void): void =>
    assert.throws(fn, (error: MemfabricError) => error.code === ErrorCodes.MIGRATING);
  refused(() => space.write(100, new Uint8Array(PAGE * 2).fill(9)));
  refused(() => space.writeU32(8, 0xdeadbeef));
  refused(() => space.writeF64(PAGE + 16, 1.5));
  refused(() => space.trim(0, PAGE * 3));
  refused(() => space.writeZeroes(10, 20));
  const after = new Uint8Array(PAGE * 3);
  space.read(0, after);
  assert.deepEqual(after, before);
  assert.equal(space.dirtyPages(space.epoch).length, 0);
  gate.closed = false;
  space.writeU32(8, 3);
  assert.equal(space.readU32(8), 3);
});

test('continueEpoch raises the epoch (never lowers it) so dirty epochs from another space stay meaningful', () => {
  const { space } = setup();
  space.writeU32(0, 1);
  assert.equal(space.continueEpoch(40), 40);
  space.writeU32(PAGE, 2);
  assert.deepEqual([...space.dirtyPages(40)], [1]);
  assert.equal(space.continueEpoch(10), 40);
  assert.throws(
    () => space.continueEpoch(0),
    (error: MemfabricError) => error.code === ErrorCodes.INVALID_ARGUMENT,
  );
});
