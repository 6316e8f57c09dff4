/**
 * Blobs: arbitrary JS values kept in the heap as MessagePack (msgpackr), so a program can
 * store what has no fixed layout (configuration, documents, Maps of Sets, graphs with cycles)
 * beside its structs.
 *
 *   const address = putValue(heap, { name: 'ada', tags: new Set(['x']), at: new Date() });
 *   getValue(heap, address);                     // a new copy of the value
 *   const moved = replaceValue(heap, address, bigger);  // may move: keep the returned address
 *   freeValue(heap, moved);
 *
 * Encoding. msgpackr with `structuredClone` (Map, Set, Date, RegExp, Error, typed arrays,
 * shared and cyclic references come back as they went in), records (an object's keys written
 * once per shape), bigints as bigints (int64 and msgpackr's bigint extension), and copied
 * buffers (a decoded Uint8Array never aliases the heap or our scratch). What msgpack cannot
 * say comes back normalised: -0 as 0, holes in sparse arrays as undefined, null-prototype
 * objects and class instances as plain objects of their own enumerable properties, functions
 * (and WeakMaps, Promises) as undefined or empty objects; an own key named "__proto__" as
 * "__proto_" (msgpackr's guard against prototype pollution); a symbol is refused.
 *
 * Layout. A blob is one allocation: an 8-byte header, [u32 tag][u32 payload bytes], then the
 * payload. The tag (type-tags.ts) makes getValue of a struct, of freed memory or of any other
 * address fail with MF_HEAP_TYPE instead of decoding garbage; freeValue clears it first.
 *
 * Record structures. msgpackr can share record definitions between messages ("shared
 * structures"), which makes small objects smaller, but a blob then decodes only with the
 * structure table it was written with, so that table must persist with the heap. We offer
 * both, each with its own tag so neither is read as the other:
 * - putValue/getValue/replaceValue/freeValue: shared structures off. Every blob carries its own
 *   record definitions and decodes on its own: nothing to persist, nothing to lose, and a
 *   blob copied to another heap still reads. The cost is the key names once per blob.
 * - BlobCodec: shared structures on, the table persisted in the heap as a blob of its own,
 *   found through a small codec header object whose address the caller keeps (as a named
 *   root). A codec's blobs carry a 16-byte header, [tag][bytes][codec address as u64], so a
 *   blob is only decoded by the codec that wrote it. Because the table lives in the heap it
 *   is checkpointed, recovered and forked with the blobs that use it: each fork extends its
 *   own copy. msgpackr's isCompatible protocol (as in lmdb-js) lets two BlobCodec objects
 *   opened on the same header in one process take turns extending the table.
 *
 * Large values are packed once and written with a single space.write, so a blob may span
 * any number of pages. Reads go through one reused scratch buffer, grown in page multiples
 * up to SCRATCH_BYTES_MAX; larger values get a buffer of their own for that call.
 */
import { Packr, type Options } from 'msgpackr';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { HeapMemory } from './memory.js';
import { BLOB_TAG, CODEC_TAG, SHARED_BLOB_TAG, readTag, wrongTypeError } from './type-tags.js';

/** Header of a self-contained blob: tag, payload length. */
const BLOB_HEADER_BYTES = 8;
/** Header of a codec's blob: tag, payload length, the codec's header address (u64). */
const SHARED_HEADER_BYTES = 16;
/** Largest payload: the header's u32 length. */
export const BLOB_BYTES_MAX = 0xffff_ffff;
/** The read scratch grows to this; a larger value is read into a buffer of its own. */
const SCRATCH_BYTES_MAX = 1 << 20;
const SCRATCH_GRAIN = 4096;

const BASE_OPTIONS: Options = {
  structuredClone: true,
  useRecords: true,
  copyBuffers: true,
  int64AsType: 'bigint',
  useBigIntExtension: true,
};

/** One blob format: its tag, header size, the owner written in the header, its codec. */
interface Format {
  readonly tag: number;
  readonly headerBytes: number;
  /** The codec header address stored in each blob's header (0 for self-contained blobs). */
  readonly owner: number;
  readonly packr: Packr;
  readonly what: string;
}

const selfContained: Format = {
  tag: BLOB_TAG,
  headerBytes: BLOB_HEADER_BYTES,
  owner: 0,
  packr: new Packr(BASE_OPTIONS),
  what: 'a msgpack blob (putValue)',
};

let scratch = Buffer.allocUnsafe(SCRATCH_GRAIN);

function pack(format: Format, value: unknown): Buffer {
  let encoded: Buffer;
  try {
    encoded = format.packr.pack(value);
  } catch (error) {
    if (error instanceof MemfabricError) throw error; // from saving a codec's table (MF_HEAP_FULL)
    throw new MemfabricError(
      ErrorCodes.INVALID_ARGUMENT,
      `this value cannot be stored as msgpack (${(error as Error).message}); remove symbols and other values msgpack cannot encode`,
      { cause: error },
    );
  }
  if (encoded.length > BLOB_BYTES_MAX) {
    throw invalidArgument(
      `a value of ${encoded.length} encoded bytes exceeds the ${BLOB_BYTES_MAX}-byte blob limit; split it`,
    );
  }
  return encoded;
}

function writeBlob(memory: HeapMemory, format: Format, address: number, encoded: Buffer): void {
  const space = memory.space;
  space.write(address + format.headerBytes, encoded);
  space.writeU32(address + 4, encoded.length);
  if (format.headerBytes === SHARED_HEADER_BYTES) {
    space.writeU32(address + 8, format.owner >>> 0);
    space.writeU32(address + 12, (format.owner / 4294967296) >>> 0);
  }
  space.writeU32(address, format.tag);
}

/** Payload length of the blob at `address`, after checking its tag (and owner). */
function checkBlob(memory: HeapMemory, format: Format, address: number): number {
  const space = memory.space;
  const tag = readTag(space, address);
  if (tag !== format.tag) throw wrongTypeError(address, format.what, tag);
  if (format.headerBytes === SHARED_HEADER_BYTES) {
    const owner = space.readU32(address + 8) + space.readU32(address + 12) * 4294967296;
    if (owner !== format.owner) {
      throw new MemfabricError(
        ErrorCodes.HEAP_TYPE,
        `the blob at address ${address} belongs to the BlobCodec at ${owner}, not this one at ${format.owner}; read it with the codec that wrote it`,
      );
    }
  }
  return space.readU32(address + 4);
}

function put(memory: HeapMemory, format: Format, value: unknown): number {
  return putEncoded(memory, format, pack(format, value));
}

/** `encoded` is msgpackr's buffer, valid until its next pack: nothing here packs. */
function putEncoded(memory: HeapMemory, format: Format, encoded: Buffer): number {
  const address = memory.allocator.alloc(format.headerBytes + encoded.length);
  try {
    writeBlob(memory, format, address, encoded);
  } catch (error) {
    memory.allocator.free(address);
    throw error;
  }
  return address;
}

function get(memory: HeapMemory, format: Format, address: number): unknown {
  const length = checkBlob(memory, format, address);
  if (length > SCRATCH_BYTES_MAX && format.headerBytes + length > memory.allocator.usableSize(address)) {
    throw new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `the blob at address ${address} claims ${length} bytes, more than its allocation; the heap is damaged`,
    );
  }
  let buffer: Buffer;
  if (length <= SCRATCH_BYTES_MAX) {
    if (scratch.length < length)
      scratch = Buffer.allocUnsafe(Math.ceil(length / SCRATCH_GRAIN) * SCRATCH_GRAIN);
    buffer = scratch.subarray(0, length);
  } else {
    buffer = Buffer.allocUnsafe(length);
  }
  memory.space.read(address + format.headerBytes, buffer);
  try {
    return format.packr.unpack(buffer);
  } catch (error) {
    throw new MemfabricError(
      ErrorCodes.HEAP_CORRUPT,
      `the blob at address ${address} does not decode (${(error as Error).message}); the heap is damaged`,
      { cause: error },
    );
  }
}

function replace(memory: HeapMemory, format: Format, address: number, value: unknown): number {
  checkBlob(memory, format, address);
  const encoded = pack(format, value);
  const needed = format.headerBytes + encoded.length;
  const usable = memory.allocator.usableSize(address);
  if (needed > usable) {
    // Grow: a new block first (MF_HEAP_FULL leaves the old value intact), then free the old.
    const moved = putEncoded(memory, format, encoded);
    freeBlob(memory, format, address);
    return moved;
  }
  let target = address;
  if (needed <= usable / 2) {
    // Shrink: let the allocator return the tail (it may move the block); if it cannot, stay.
    try {
      target = memory.allocator.realloc(address, needed);
    } catch (error) {
      if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.HEAP_FULL) throw error;
    }
  }
  writeBlob(memory, format, target, encoded);
  return target;
}

function freeBlob(memory: HeapMemory, format: Format, address: number): void {
  const space = memory.space;
  const tag = readTag(space, address);
  if (tag !== format.tag) {
    if (address !== 0) memory.allocator.usableSize(address); // MF_HEAP_BAD_FREE for a non-object
    throw wrongTypeError(address, format.what, tag);
  }
  space.writeU32(address, 0);
  try {
    memory.allocator.free(address);
  } catch (error) {
    space.writeU32(address, tag);
    throw error;
  }
}

// -----------------------------------------------------------------------------------------
// Self-contained blobs

/** Stores `value` as a new blob; returns its address. MF_INVALID_ARGUMENT if it cannot be encoded. */
export function putValue(memory: HeapMemory, value: unknown): number {
  return put(memory, selfContained, value);
}

/** A new copy of the value stored at `address`. MF_HEAP_TYPE if the address holds no such blob. */
export function getValue<T = unknown>(memory: HeapMemory, address: number): T {
  return get(memory, selfContained, address) as T;
}

/**
 * Replaces the value at `address`; returns the blob's address, which changes when the new
 * value does not fit the old block (or is less than half of it). The old address is then
 * freed. On any error the old value stays as it was.
 */
export function replaceValue(memory: HeapMemory, address: number, value: unknown): number {
  return replace(memory, selfContained, address, value);
}

/** Frees a blob. MF_HEAP_TYPE for an address of something else, MF_HEAP_BAD_FREE for a freed one. */
export function freeValue(memory: HeapMemory, address: number): void {
  freeBlob(memory, selfContained, address);
}

/** Encoded bytes of the blob at `address` (without its header). */
export function valueByteLength(memory: HeapMemory, address: number): number {
  return checkBlob(memory, selfContained, address);
}

// -----------------------------------------------------------------------------------------
// BlobCodec: blobs with shared record structures persisted in the heap

/**
 * Codec header object: [u32 CODEC_TAG][u16 version][u16 maxSharedStructures][u64 address of
 * the structures blob, 0 while there is none]. The structures blob is a self-contained blob.
 */
const CODEC_HEADER_BYTES = 16;
const CODEC_VERSION = 1;
const SHARED_STRUCTURES_DEFAULT = 32;
/** msgpackr's limit. */
const SHARED_STRUCTURES_MAX = 8160;

export interface BlobCodecOptions {
  /**
   * How many object shapes get a shared record id (more need 2-byte ids); fixed when the codec
   * is created and stored in its header. Default 32.
   */
  maxSharedStructures?: number;
}

export class BlobCodec {
  private readonly format: Format;

  private constructor(
    private readonly memory: HeapMemory,
    /** Address of the codec's header object: keep it (a named root) to reopen the codec. */
    readonly address: number,
    maxSharedStructures: number,
  ) {
    const packr = new Packr({
      ...BASE_OPTIONS,
      maxSharedStructures,
      getStructures: () => this.loadStructures(),
      // msgpackr passes an isCompatible check as a second argument its typings do not declare.
      saveStructures: ((structures: string[][], isCompatible: (existing: string[][]) => boolean) =>
        this.saveStructures(structures, isCompatible)) as NonNullable<Options['saveStructures']>,
    });
    this.format = {
      tag: SHARED_BLOB_TAG,
      headerBytes: SHARED_HEADER_BYTES,
      owner: address,
      packr,
      what: 'a msgpack blob of a BlobCodec',
    };
  }

  /** Makes a codec with an empty structure table in `memory`; keep `codec.address`. */
  static create(memory: HeapMemory, options: BlobCodecOptions = {}): BlobCodec {
    const shared = options.maxSharedStructures ?? SHARED_STRUCTURES_DEFAULT;
    if (!Number.isInteger(shared) || shared < 0 || shared > SHARED_STRUCTURES_MAX) {
      throw invalidArgument(
        `maxSharedStructures must be an integer from 0 to ${SHARED_STRUCTURES_MAX}, got ${shared}`,
      );
    }
    const address = memory.allocator.alloc(CODEC_HEADER_BYTES);
    const space = memory.space;
    space.writeZeroes(address, CODEC_HEADER_BYTES);
    space.writeU16(address + 4, CODEC_VERSION);
    space.writeU16(address + 6, shared);
    space.writeU32(address, CODEC_TAG);
    return new BlobCodec(memory, address, shared);
  }

  /** Reopens the codec whose header is at `address` (what `create` returned as `.address`). */
  static open(memory: HeapMemory, address: number): BlobCodec {
    const space = memory.space;
    const tag = readTag(space, address);
    if (tag !== CODEC_TAG) throw wrongTypeError(address, 'a BlobCodec header', tag);
    const version = space.readU16(address + 4);
    if (version !== CODEC_VERSION) {
      throw new MemfabricError(
        ErrorCodes.HEAP_FOREIGN,
        `the BlobCodec at ${address} is format version ${version}; this memfabric reads version ${CODEC_VERSION}, upgrade it`,
      );
    }
    return new BlobCodec(memory, address, space.readU16(address + 6));
  }

  put(value: unknown): number {
    return this.guard(() => put(this.memory, this.format, value));
  }

  get<T = unknown>(address: number): T {
    return get(this.memory, this.format, address) as T;
  }

  replace(address: number, value: unknown): number {
    return this.guard(() => replace(this.memory, this.format, address, value));
  }

  free(address: number): void {
    freeBlob(this.memory, this.format, address);
  }

  /** Record shapes in the persisted table. */
  get sharedStructures(): number {
    return this.loadStructures().length;
  }

  /**
   * Frees the codec's header and its structure table. Free every blob it wrote first: they can
   * no longer be decoded.
   */
  destroy(): void {
    const table = this.tableAddress();
    if (table !== 0) freeValue(this.memory, table);
    this.memory.space.writeU32(this.address, 0);
    this.memory.allocator.free(this.address);
  }

  /**
   * Runs an encoding step; if it fails after msgpackr assigned new record ids in memory (the
   * table's save may have failed with MF_HEAP_FULL), forget them, so the next pack reloads the
   * table from the heap rather than using ids the heap never recorded.
   */
  private guard<T>(step: () => T): T {
    try {
      return step();
    } catch (error) {
      const reset: unknown[] & { uninitialized?: boolean; sharedLength?: number } = [];
      reset.uninitialized = true;
      reset.sharedLength = 0;
      (this.format.packr as unknown as { structures: unknown }).structures = reset;
      throw error;
    }
  }

  private tableAddress(): number {
    const space = this.memory.space;
    return space.readU32(this.address + 8) + space.readU32(this.address + 12) * 4294967296;
  }

  private loadStructures(): string[][] {
    const table = this.tableAddress();
    return table === 0 ? [] : getValue<string[][]>(this.memory, table);
  }

  private saveStructures(structures: string[][], isCompatible: (existing: string[][]) => boolean): boolean {
    if (!isCompatible(this.loadStructures())) return false;
    const plain = structures.map((keys) => [...keys]);
    const old = this.tableAddress();
    const table = old === 0 ? putValue(this.memory, plain) : replaceValue(this.memory, old, plain);
    const space = this.memory.space;
    space.writeU32(this.address + 8, table >>> 0);
    space.writeU32(this.address + 12, (table / 4294967296) >>> 0);
    return true;
  }
}
