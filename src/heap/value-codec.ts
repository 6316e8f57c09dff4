/**
 * Value codecs for the heap's collections. A collection stores one kind of value, chosen when it
 * is created and kept in its header:
 *
 *   - 'number': an f64, inline (8 bytes).
 *   - 'ref':    a heap address (a whole number >= 0; 0 means "none"), inline (8 bytes).
 *   - 'msgpack': any structured-cloneable JS value, packed with msgpackr (`structuredClone: true`,
 *     so cycles, Maps, Sets, Dates, typed arrays and bigints survive; no shared structures, so each
 *     packed value decodes on its own, in any process, forever). Up to `inlineMax` packed bytes
 *     live inline in the node; longer ones go to a blob of their own (one allocation, freed when the
 *     entry is overwritten or deleted).
 *
 * In a node, a value is a one-byte tag (stored in the entry's header) and a part whose size the tag
 * decides:
 *
 *   TAG_NUMBER, TAG_REF  8 bytes: the f64
 *   TAG_INLINE           u16 length, then the packed bytes
 *   TAG_BLOB             u32 length, f64 address of the blob holding the packed bytes
 */
import { Packr } from 'msgpackr';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { getF64, getU16, getU32, putF64, putU16, putU32 } from './bytes-le.js';
import type { HeapMemory } from './memory.js';

export type ValueKind = 'number' | 'ref' | 'msgpack';

/** The JS type of a value kind ('msgpack' values are typed by the caller's generic). */
export type ValueOf<Kind extends ValueKind, V = unknown> = Kind extends 'number' | 'ref' ? number : V;

export const VALUE_KIND_CODES: Record<ValueKind, number> = { number: 1, ref: 2, msgpack: 3 };

export function valueKindOf(code: number): ValueKind | undefined {
  return code === 1 ? 'number' : code === 2 ? 'ref' : code === 3 ? 'msgpack' : undefined;
}

export const TAG_NUMBER = 1;
export const TAG_REF = 2;
export const TAG_INLINE = 3;
export const TAG_BLOB = 4;

/** Bytes of the value part that starts at `offset` of a node, given its tag. */
export function valuePartSize(tag: number, bytes: Uint8Array, offset: number): number {
  if (tag === TAG_INLINE) return 2 + getU16(bytes, offset);
  if (tag === TAG_BLOB) return 12;
  return 8;
}

/** Blob address a value part holds, or 0 (so a caller can free it after the node is rewritten). */
export function valueBlob(tag: number, bytes: Uint8Array, offset: number): number {
  return tag === TAG_BLOB ? getF64(bytes, offset + 4) : 0;
}

export class ValueCodec<V> {
  /** After `prepare`: the tag and the part size of the value prepared. */
  tag = 0;
  partSize = 0;
  private number = 0;
  private packed: Uint8Array = new Uint8Array(0);
  private blob = 0;
  private readonly packr: Packr;
  private readBuffer = Buffer.alloc(4096);

  constructor(
    readonly kind: ValueKind,
    readonly inlineMax: number,
  ) {
    if (kind !== 'number' && kind !== 'ref' && kind !== 'msgpack') {
      throw invalidArgument(`values must be 'number', 'ref' or 'msgpack', not ${JSON.stringify(kind)}`);
    }
    // No `structures`: records carry their own definitions, so every value decodes alone.
    this.packr = new Packr({ structuredClone: true, copyBuffers: true });
  }

  /** Checks and encodes `value`; sets `tag` and `partSize`. Allocates nothing in the heap yet. */
  prepare(value: V): void {
    this.blob = 0;
    if (this.kind === 'number') {
      if (typeof value !== 'number') throw wrongValue('numbers', value);
      this.number = value;
      this.tag = TAG_NUMBER;
      this.partSize = 8;
    } else if (this.kind === 'ref') {
      if (typeof value !== 'number') throw wrongValue('heap addresses (numbers)', value);
      if (!Number.isSafeInteger(value) || value < 0) {
        throw invalidArgument(`a ref value must be a heap address (a whole number >= 0), not ${value}`);
      }
      this.number = value;
      this.tag = TAG_REF;
      this.partSize = 8;
    } else {
      this.packed = this.packr.pack(value);
      if (this.packed.length <= this.inlineMax) {
        this.tag = TAG_INLINE;
        this.partSize = 2 + this.packed.length;
      } else {
        this.tag = TAG_BLOB;
        this.partSize = 12;
      }
    }
  }

  /** For a TAG_BLOB value: allocates its blob and writes the packed bytes there. Call before writing the node. */
  storeBlob(memory: HeapMemory): void {
    if (this.tag !== TAG_BLOB) return;
    const address = memory.allocator.alloc(this.packed.length);
    memory.space.write(address, this.packed);
    this.blob = address;
  }

  /** Frees the blob `storeBlob` made, when the operation is abandoned. */
  abandonBlob(memory: HeapMemory): void {
    if (this.blob !== 0) memory.allocator.free(this.blob);
    this.blob = 0;
  }

  /** Writes the prepared value's part at `dst[offset]` (storeBlob must have run for a blob). */
  writePart(dst: Uint8Array, offset: number): void {
    switch (this.tag) {
      case TAG_NUMBER:
      case TAG_REF:
        putF64(dst, offset, this.number);
        return;
      case TAG_INLINE:
        putU16(dst, offset, this.packed.length);
        dst.set(this.packed, offset + 2);
        return;
      default:
        putU32(dst, offset, this.packed.length);
        putF64(dst, offset + 4, this.blob);
    }
  }

  /**
   * The value whose part starts at `bytes[offset]`. `bytes` may be a borrowed page view: a blob
   * is read from the space only after every field is taken from `bytes`.
   */
  read(memory: HeapMemory, tag: number, bytes: Uint8Array, offset: number): V {
    if (tag === TAG_NUMBER || tag === TAG_REF) return getF64(bytes, offset) as V;
    if (tag === TAG_INLINE) {
      const length = getU16(bytes, offset);
      // Copied out first: a borrowed page view lies on the frame pool's SharedArrayBuffer, and
      // msgpackr's native string extraction refuses any buffer but an ArrayBuffer.
      if (this.readBuffer.length < length)
        this.readBuffer = Buffer.alloc(Math.max(length, this.readBuffer.length * 2));
      const copy = this.readBuffer.subarray(0, length);
      copy.set(bytes.subarray(offset + 2, offset + 2 + length));
      return this.packr.unpack(copy) as V;
    }
    if (tag !== TAG_BLOB) {
      throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `a collection entry has an unknown value tag ${tag}`);
    }
    const length = getU32(bytes, offset);
    const address = getF64(bytes, offset + 4);
    if (this.readBuffer.length < length)
      this.readBuffer = Buffer.alloc(Math.max(length, this.readBuffer.length * 2));
    const buffer = this.readBuffer.subarray(0, length);
    memory.space.read(address, buffer);
    return this.packr.unpack(buffer) as V;
  }
}

function wrongValue(expected: string, value: unknown): MemfabricError {
  return new MemfabricError(
    ErrorCodes.HEAP_TYPE,
    `this collection's values are ${expected}; got ${value === null ? 'null' : typeof value}`,
  );
}
