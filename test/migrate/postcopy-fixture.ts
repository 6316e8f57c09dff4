/**
 * Shared by the post-copy tests and their source child process: a deterministic source space
 * (data pages, zero pages and holes, written over several epochs) and its expected bytes.
 */
import { AddressSpace, FramePool } from '../../src/memory/index.js';

export interface SourceShape {
  seed: number;
  pages: number;
  pageSize: number;
  /** Bytes of the space, when not pages · pageSize (the last page is then partial). */
  size?: number;
}

function sizeOf(shape: SourceShape): number {
  return shape.size ?? shape.pages * shape.pageSize;
}

/** What page `page` of the source holds: 'data' (see pageBytes), 'zero' or 'hole'. */
export function pageKind(shape: SourceShape, page: number): 'data' | 'zero' | 'hole' {
  const h = mix(shape.seed, page) % 20;
  return h < 13 ? 'data' : h < 16 ? 'zero' : 'hole';
}

/** The bytes of data page `page`: a xorshift stream that names the seed and the page. */
export function pageBytes(shape: SourceShape, page: number): Buffer {
  const out = Buffer.alloc(shape.pageSize);
  let x = mix(shape.seed, page) || 1;
  for (let i = 0; i < shape.pageSize; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  out.writeUInt32LE(page >>> 0, 0);
  out.writeUInt32LE(shape.seed >>> 0, 4);
  return out;
}

/** The source space: data pages written over several epochs (so the push order has work). */
export function buildSource(shape: SourceShape): AddressSpace {
  const pool = new FramePool({ pageSize: shape.pageSize, capacity: (shape.pages + 8) * shape.pageSize });
  const size = sizeOf(shape);
  const space = new AddressSpace(pool, { size });
  for (let page = 0; page < shape.pages; page++) {
    if (page % 7 === 0) space.advanceEpoch();
    const kind = pageKind(shape, page);
    const at = page * shape.pageSize;
    const length = Math.min(shape.pageSize, size - at);
    if (kind === 'data') space.write(at, pageBytes(shape, page).subarray(0, length));
    else if (kind === 'zero') space.writeZeroes(at, length);
  }
  return space;
}

/** The whole space's bytes at the switchover. */
export function expectedImage(shape: SourceShape): Buffer {
  const image = Buffer.alloc(sizeOf(shape));
  for (let page = 0; page < shape.pages; page++) {
    if (pageKind(shape, page) === 'data') pageBytes(shape, page).copy(image, page * shape.pageSize);
  }
  return image;
}

function mix(seed: number, page: number): number {
  let h = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(page + 1, 0xc2b2ae35)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  h ^= h >>> 15;
  return h >>> 0;
}
