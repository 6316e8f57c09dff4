/**
 * The heap image's superblocks: slots 0 and 1 of the image, written alternately, LMDB's two
 * meta pages. Each names one committed checkpoint; the valid one with the higher generation
 * is the heap. A checkpoint writes the *other* superblock (generation + 1) only after
 * everything it names is durable, so a crash at any instant leaves at least one valid
 * superblock naming a complete checkpoint, and a torn superblock fails its checksum.
 *
 * Layout (little-endian), the rest of the slot is zeros:
 *   0    8   magic 'MFHEAP\0\1'
 *   8    u32 format version (HEAP_FORMAT_VERSION)
 *   12   u32 page size
 *   16   u64 generation (1 for the first checkpoint; 0 = created, never checkpointed)
 *   24   u64 heap size in bytes (the address space's virtual size)
 *   32   u32 page-map root: slot word (see page-map.ts)
 *   36   u32 page-map root: checksum of the root page
 *   40   u32 page-map levels (0 = no map: every page is a hole)
 *   44   u32 base slots: a fork reads slots [2, baseSlots) from its base image (0 = no base)
 *   48   u64 logical pages the map covers
 *   56   u64 time of the checkpoint (ms since the epoch)
 *   64   u64 bytes the heap's header page says are in use (informational, for `heap info`)
 *   72   u32 fork pins in use (at most PINS_MAX)
 *   76   u32 a fork's base generation: the parent's checkpoint it was forked from (0 = no base)
 *   80   PINS_MAX × 32: pinned page maps (u32 root slot word, u32 root checksum, u32 levels,
 *        u32 reserved, u64 pages, u64 generation), kept for forks that read this image as
 *        their base: no slot a pinned map names is ever reused
 *   592  u16 base path length, then the base image's path (UTF-8, at most BASE_PATH_MAX bytes)
 *   1020 u32 xxh32 of bytes [0, 1020)
 */
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError } from '../errors.js';

export const HEAP_MAGIC = Buffer.from('MFHEAP\0\x01', 'latin1');
export const HEAP_FORMAT_VERSION = 1;
export const SUPERBLOCK_BYTES = 1024;
export const PINS_MAX = 16;
export const BASE_PATH_MAX = 400;
const PINS_OFFSET = 80;
const BASE_PATH_OFFSET = 592;
const CHECKSUM_OFFSET = SUPERBLOCK_BYTES - 4;

export interface MapRoot {
  /** Slot word of the root map page (0: no map). */
  slot: number;
  checksum: number;
  levels: number;
}

/** A page map kept for a fork: the parent's checkpoint `generation`, which the fork reads. */
export interface Pin extends MapRoot {
  pages: number;
  generation: number;
}

export interface Superblock {
  pageSize: number;
  generation: number;
  size: number;
  root: MapRoot;
  /** Logical pages the map covers (the space's pages up to the highest one ever stored). */
  pages: number;
  baseSlots: number;
  basePath: string;
  baseGeneration: number;
  time: number;
  usedBytes: number;
  pins: Pin[];
}

export function encodeSuperblock(block: Superblock, pageSize: number): Uint8Array {
  const out = Buffer.alloc(pageSize);
  HEAP_MAGIC.copy(out, 0);
  out.writeUInt32LE(HEAP_FORMAT_VERSION, 8);
  out.writeUInt32LE(block.pageSize, 12);
  out.writeBigUInt64LE(BigInt(block.generation), 16);
  out.writeBigUInt64LE(BigInt(block.size), 24);
  out.writeUInt32LE(block.root.slot >>> 0, 32);
  out.writeUInt32LE(block.root.checksum >>> 0, 36);
  out.writeUInt32LE(block.root.levels, 40);
  out.writeUInt32LE(block.baseSlots, 44);
  out.writeBigUInt64LE(BigInt(block.pages), 48);
  out.writeBigUInt64LE(BigInt(Math.floor(block.time)), 56);
  out.writeBigUInt64LE(BigInt(block.usedBytes), 64);
  if (block.pins.length > PINS_MAX) throw new Error(`at most ${PINS_MAX} pins`);
  out.writeUInt32LE(block.pins.length, 72);
  out.writeUInt32LE(block.baseGeneration, 76);
  block.pins.forEach((pin, i) => {
    const at = PINS_OFFSET + i * 32;
    out.writeUInt32LE(pin.slot >>> 0, at);
    out.writeUInt32LE(pin.checksum >>> 0, at + 4);
    out.writeUInt32LE(pin.levels, at + 8);
    out.writeBigUInt64LE(BigInt(pin.pages), at + 16);
    out.writeBigUInt64LE(BigInt(pin.generation), at + 24);
  });
  const path = Buffer.from(block.basePath, 'utf8');
  if (path.length > BASE_PATH_MAX) throw new Error(`base path longer than ${BASE_PATH_MAX} bytes`);
  out.writeUInt16LE(path.length, BASE_PATH_OFFSET);
  path.copy(out, BASE_PATH_OFFSET + 2);
  out.writeUInt32LE(xxh32(out.subarray(0, CHECKSUM_OFFSET), 0) >>> 0, CHECKSUM_OFFSET);
  return out;
}

/** What one superblock slot holds. */
export type SuperblockRead =
  | { kind: 'valid'; block: Superblock }
  | { kind: 'empty' }
  | { kind: 'foreign' }
  | { kind: 'newer'; version: number }
  | { kind: 'damaged'; why: string };

export function decodeSuperblock(bytes: Uint8Array): SuperblockRead {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < SUPERBLOCK_BYTES) return { kind: 'damaged', why: 'shorter than a superblock' };
  if (buf.subarray(0, SUPERBLOCK_BYTES).every((b) => b === 0)) return { kind: 'empty' };
  if (!buf.subarray(0, 7).equals(HEAP_MAGIC.subarray(0, 7))) return { kind: 'foreign' };
  const version = buf.readUInt32LE(8);
  if (version > HEAP_FORMAT_VERSION) return { kind: 'newer', version };
  const sum = xxh32(buf.subarray(0, CHECKSUM_OFFSET), 0) >>> 0;
  if (sum !== buf.readUInt32LE(CHECKSUM_OFFSET)) return { kind: 'damaged', why: 'checksum mismatch' };
  if (version !== HEAP_FORMAT_VERSION) return { kind: 'damaged', why: `format version ${version}` };
  const pinCount = buf.readUInt32LE(72);
  const pathLength = buf.readUInt16LE(BASE_PATH_OFFSET);
  if (pinCount > PINS_MAX || pathLength > BASE_PATH_MAX)
    return { kind: 'damaged', why: 'impossible field values' };
  const pins: Pin[] = [];
  for (let i = 0; i < pinCount; i++) {
    const at = PINS_OFFSET + i * 32;
    pins.push({
      slot: buf.readUInt32LE(at),
      checksum: buf.readUInt32LE(at + 4),
      levels: buf.readUInt32LE(at + 8),
      pages: Number(buf.readBigUInt64LE(at + 16)),
      generation: Number(buf.readBigUInt64LE(at + 24)),
    });
  }
  return {
    kind: 'valid',
    block: {
      pageSize: buf.readUInt32LE(12),
      generation: Number(buf.readBigUInt64LE(16)),
      size: Number(buf.readBigUInt64LE(24)),
      root: { slot: buf.readUInt32LE(32), checksum: buf.readUInt32LE(36), levels: buf.readUInt32LE(40) },
      baseSlots: buf.readUInt32LE(44),
      baseGeneration: buf.readUInt32LE(76),
      pages: Number(buf.readBigUInt64LE(48)),
      time: Number(buf.readBigUInt64LE(56)),
      usedBytes: Number(buf.readBigUInt64LE(64)),
      pins,
      basePath: buf.toString('utf8', BASE_PATH_OFFSET + 2, BASE_PATH_OFFSET + 2 + pathLength),
    },
  };
}

/**
 * Picks the committed checkpoint from the two superblocks: the valid one with the higher
 * generation. Throws HEAP_FOREIGN for a file that is not a heap image or is of a newer
 * version, HEAP_CORRUPT when neither superblock is valid.
 */
export function chooseSuperblock(
  path: string,
  a: SuperblockRead,
  b: SuperblockRead,
): { block: Superblock; slot: 0 | 1 } {
  for (const read of [a, b]) {
    if (read.kind === 'newer') {
      throw new MemfabricError(
        ErrorCodes.HEAP_FOREIGN,
        `${path} is a heap image of format version ${read.version}, newer than this memfabric's ` +
          `${HEAP_FORMAT_VERSION}; it was left untouched: open it with a newer memfabric`,
      );
    }
  }
  if (a.kind === 'foreign' || (a.kind === 'empty' && b.kind === 'foreign')) {
    throw new MemfabricError(
      ErrorCodes.HEAP_FOREIGN,
      `${path} is not a memfabric heap image (it does not start with a heap superblock); it was left ` +
        'untouched: check the path, or use Heap.create for a new heap',
    );
  }
  const valid: { block: Superblock; slot: 0 | 1 }[] = [];
  if (a.kind === 'valid') valid.push({ block: a.block, slot: 0 });
  if (b.kind === 'valid') valid.push({ block: b.block, slot: 1 });
  if (valid.length === 0) {
    const why = (r: SuperblockRead): string => (r.kind === 'damaged' ? r.why : r.kind);
    throw new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `${path}: neither superblock is valid (first: ${why(a)}, second: ${why(b)}); the image cannot be ` +
        'opened: restore it from a copy',
    );
  }
  valid.sort((x, y) => y.block.generation - x.block.generation);
  return valid[0]!;
}
