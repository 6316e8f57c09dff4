/**
 * FramePool's reference-taking methods, called directly: their contracts hold for every kind of
 * leaf entry, not only for the entries today's callers pass.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AddressSpace, ErrorCodes, FramePool } from '../../src/index.js';
import { FIRST_FRAME, NO_FRAME, ZERO_FRAME } from '../../src/memory/frame-pool.js';
import { MapPaging } from './paging-backend.js';

const PAGE = 512;

test('allocate reserves a frame itself when none is free: a growable pool grows, a full one refuses', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 2 * PAGE, maxCapacity: 8 * PAGE });
  const frames = [pool.allocate(), pool.allocate()];
  assert.equal(pool.free, 0);
  frames.push(pool.allocate()); // no reserve() first: allocate grows the pool
  assert.ok(pool.capacity > 2);
  assert.equal(new Set(frames).size, 3, 'three distinct frames');
  for (const frame of frames) {
    assert.ok(frame >= FIRST_FRAME);
    assert.equal(pool.refcount[frame], 1);
  }
  const fixed = new FramePool({ pageSize: PAGE, capacity: PAGE });
  fixed.allocate();
  assert.throws(() => fixed.allocate(), { code: ErrorCodes.POOL_EXHAUSTED });
});

test('retainEntry and release take any leaf entry: a frame, the zero frame, a swapped page, or none', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, shared: true });
  const paging = new MapPaging(pool);
  const space = new AddressSpace(pool, { size: 8 * PAGE });
  space.write(0, Buffer.alloc(PAGE, 1));
  paging.evictAll();
  const swapped = space.frameAt(0);
  const slot = -1 - swapped;
  assert.deepEqual(paging.references(), new Map([[slot, 1]]));
  const frame = pool.allocate();
  pool.retainEntry(frame);
  assert.equal(pool.refcount[frame], 2, 'a frame gains a reference');
  pool.retainEntry(ZERO_FRAME);
  assert.equal(pool.zeroEntries, 1, 'the zero frame counts one more entry');
  pool.retainEntry(swapped);
  assert.deepEqual(paging.references(), new Map([[slot, 2]]), 'a swapped entry retains its slot');
  // An empty entry holds nothing (MapPaging fails on a slot nobody holds).
  pool.retainEntry(NO_FRAME);
  pool.release(NO_FRAME);
  assert.equal(pool.zeroEntries, 1);
  assert.equal(pool.refcount[NO_FRAME], 0);
  pool.release(swapped);
  assert.deepEqual(paging.references(), new Map([[slot, 1]]), 'and release gives it back');
  pool.release(ZERO_FRAME);
  assert.equal(pool.zeroEntries, 0);
  pool.release(frame);
  pool.release(frame);
  assert.equal(pool.refcount[frame], 0, 'the frame is free after its last reference');
  space.destroy();
  assert.equal(paging.slots.size, 0);
  assert.equal(pool.used, 0);
});

test('a growable pool whose maxCapacity fits one segment grows within segment 0, handing out frames in order', () => {
  const pool = new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, maxCapacity: 1000 * PAGE });
  assert.equal(pool.framesPerSegment, 1024);
  assert.equal(
    pool.segments[0]!.length,
    1002 * PAGE,
    'segment 0 holds maxCapacity and the two reserved frames',
  );
  const space = new AddressSpace(pool, { size: 600 * PAGE });
  space.write(0, Buffer.alloc(PAGE, 1));
  // Written in order while the pool grows: the frames free before a growth come first, then
  // the new ones from the lowest, so the pages map one run of consecutive frames.
  space.write(PAGE, Buffer.alloc(599 * PAGE, 2));
  assert.ok(pool.capacity >= 600);
  assert.equal(pool.segments.length, 1);
  for (let page = 0; page < 600; page++) assert.equal(space.frameAt(page), FIRST_FRAME + page);
  space.destroy();
  // A pool that cannot fit one segment grows by segments of its initial size.
  const large = new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, maxCapacity: 2 ** 31 + PAGE });
  assert.equal(large.framesPerSegment, 8);
});

test('segmentFrames (internal) spreads a pool over several segments, and must be a power of two', () => {
  const pool = new FramePool({
    pageSize: PAGE,
    capacity: 4 * PAGE,
    maxCapacity: 64 * PAGE,
    segmentFrames: 8,
  });
  const space = new AddressSpace(pool, { size: 40 * PAGE });
  space.write(0, Buffer.alloc(40 * PAGE, 3));
  assert.equal(pool.segments.length, 6);
  assert.equal(space.readU8(39 * PAGE + 7), 3);
  space.destroy();
  for (const segmentFrames of [0, 1, 6, 2 ** 30]) {
    assert.throws(() => new FramePool({ pageSize: PAGE, capacity: 4 * PAGE, segmentFrames }), {
      code: ErrorCodes.INVALID_ARGUMENT,
    });
  }
});
