/**
 * Key codecs for the heap's collections: a key becomes bytes that are stored in a node, compared
 * byte-wise (memcmp order) and hashed.
 *
 *   - 'string': UTF-8. Byte order is code point order (so "\u{1F600}" sorts after "\uFFFF", unlike
 *     JS's `<`, which compares UTF-16 code units). A string with a lone surrogate has no UTF-8 form
 *     and is refused (MF_INVALID_ARGUMENT) rather than silently turned into U+FFFD, which would make
 *     two different strings one key.
 *   - 'number': the f64's 8 bytes, big-endian, with the sign bit flipped for positive numbers and
 *     every bit flipped for negative ones, so byte order is numeric order: -Infinity < ... < -0 ...
 *     Decisions: -0 is the same key as 0 (as in a JS Map) and reads back as 0; every NaN is one key
 *     (as in a JS Map) that sorts after +Infinity.
 *   - 'bytes': the bytes themselves (a Uint8Array; zeros allowed; the empty array is a key).
 *
 * Encoding does not allocate: a codec encodes into its own scratch buffer (or, for bytes, points at
 * the caller's array) and leaves the result in `bytes` / `length`, valid until the next encode.
 * Keys longer than the collection's `keyMax` are refused with MF_INVALID_ARGUMENT.
 */
import { xxh32 } from '@node-rs/xxhash';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';

export type KeyKind = 'string' | 'number' | 'bytes';

/** The JS type of a key kind. */
export type KeyOf<Kind extends KeyKind> = Kind extends 'string'
  ? string
  : Kind extends 'number'
    ? number
    : Uint8Array;

/** Stored in collection headers. 0 is never used, so a zeroed header is recognisably not one. */
export const KEY_KIND_CODES: Record<KeyKind, number> = { string: 1, number: 2, bytes: 3 };

export function keyKindOf(code: number): KeyKind | undefined {
  return code === 1 ? 'string' : code === 2 ? 'number' : code === 3 ? 'bytes' : undefined;
}

/** Float64 <-> bytes without allocating (module scratch; single-threaded use). */
const f64 = new Float64Array(1);
const f64Words = new Uint32Array(f64.buffer);
/** Little-endian hosts put the f64's low word first; every Node.js platform we run on is LE. */
const HI = 1;
const LO = 0;

const textDecoder = new TextDecoder('utf-8', { fatal: false });

export abstract class KeyCodec<K> {
  abstract readonly kind: KeyKind;
  /** The encoded key after `encode`: BORROWED, valid until the next encode on this codec. */
  bytes: Uint8Array;
  length = 0;
  /** 32-bit hash of the encoded key at `bytes[offset, offset + length)` (with the collection's seed). */
  abstract hashAt(bytes: Uint8Array, offset: number, length: number, seed: number): number;
  /** Encodes `key` into `bytes` / `length`; refuses a wrong type or a key longer than keyMax. */
  abstract encode(key: K): void;

  /** Hash of the key `encode` left in `bytes`. */
  hash(seed: number): number {
    return this.hashAt(this.bytes, 0, this.length, seed);
  }
  /** The key stored at `bytes[offset, offset + length)`. */
  abstract decode(bytes: Uint8Array, offset: number, length: number): K;

  constructor(readonly keyMax: number) {
    this.bytes = new Uint8Array(keyMax);
  }

  protected tooLong(length: number): never {
    throw invalidArgument(
      `a key of ${length} bytes is longer than this collection's limit of ${this.keyMax} bytes; ` +
        'use shorter keys (or hash long ones)',
    );
  }
}

class StringKeyCodec extends KeyCodec<string> {
  readonly kind = 'string' as const;
  private readonly buffer: Buffer;

  constructor(keyMax: number) {
    super(keyMax);
    this.buffer = Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  encode(key: string): void {
    if (typeof key !== 'string') throw wrongKey('string', key);
    // Fast path: at most 3 UTF-8 bytes per UTF-16 unit, so a short key always fits the scratch.
    if (key.length * 3 > this.keyMax) {
      const length = Buffer.byteLength(key, 'utf8');
      if (length > this.keyMax) this.tooLong(length);
    }
    // ASCII (the common key) is copied in JS: cheaper than the native encoder for short keys.
    const n = key.length;
    const bytes = this.bytes;
    if (n <= bytes.length) {
      let i = 0;
      for (; i < n; i++) {
        const c = key.charCodeAt(i);
        if (c >= 0x80) break;
        bytes[i] = c;
      }
      if (i === n) {
        this.length = n;
        return;
      }
    }
    if (!isWellFormed(key)) {
      throw invalidArgument('a string key must be well-formed UTF-16 (it has a lone surrogate)');
    }
    this.length = this.buffer.write(key, 0, 'utf8');
  }

  decode(bytes: Uint8Array, offset: number, length: number): string {
    if (Buffer.isBuffer(bytes)) return bytes.toString('utf8', offset, offset + length);
    return textDecoder.decode(bytes.subarray(offset, offset + length));
  }

  hashAt(bytes: Uint8Array, offset: number, length: number, seed: number): number {
    return hashBytes(bytes, offset, length, seed);
  }
}

class NumberKeyCodec extends KeyCodec<number> {
  readonly kind = 'number' as const;

  encode(key: number): void {
    if (typeof key !== 'number') throw wrongKey('number', key);
    writeOrderedF64(key, this.bytes, 0);
    this.length = 8;
  }

  decode(bytes: Uint8Array, offset: number): number {
    return readOrderedF64(bytes, offset);
  }

  /** An integer mix of the two words: numbers never take the native hash call. */
  hashAt(b: Uint8Array, o: number, _length: number, seed: number): number {
    const hi = (b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!;
    const lo = (b[o + 4]! << 24) | (b[o + 5]! << 16) | (b[o + 6]! << 8) | b[o + 7]!;
    return mix32(Math.imul(hi ^ seed, 0x9e3779b1) ^ lo);
  }
}

class BytesKeyCodec extends KeyCodec<Uint8Array> {
  readonly kind = 'bytes' as const;

  encode(key: Uint8Array): void {
    if (!(key instanceof Uint8Array)) throw wrongKey('Uint8Array', key);
    if (key.length > this.keyMax) this.tooLong(key.length);
    this.bytes = key;
    this.length = key.length;
  }

  decode(bytes: Uint8Array, offset: number, length: number): Uint8Array {
    // A copy as a plain Uint8Array (Buffer#slice would share the node's memory).
    const key = new Uint8Array(length);
    key.set(bytes.subarray(offset, offset + length));
    return key;
  }

  hashAt(bytes: Uint8Array, offset: number, length: number, seed: number): number {
    return hashBytes(bytes, offset, length, seed);
  }
}

export function keyCodec(kind: KeyKind, keyMax: number): KeyCodec<unknown> {
  switch (kind) {
    case 'string':
      return new StringKeyCodec(keyMax) as KeyCodec<unknown>;
    case 'number':
      return new NumberKeyCodec(keyMax) as KeyCodec<unknown>;
    case 'bytes':
      return new BytesKeyCodec(keyMax) as KeyCodec<unknown>;
    default:
      throw invalidArgument(`keys must be 'string', 'number' or 'bytes', not ${JSON.stringify(kind)}`);
  }
}

/** Writes `value` in the order-preserving 8-byte form (see the overview for -0 and NaN). */
export function writeOrderedF64(value: number, out: Uint8Array, offset: number): void {
  f64[0] = value === 0 ? 0 : value; // -0 -> +0
  let hi = f64Words[HI]!;
  let lo = f64Words[LO]!;
  if (value !== value) {
    hi = 0x7ff80000; // one canonical NaN
    lo = 0;
  }
  if (hi & 0x80000000) {
    hi = ~hi;
    lo = ~lo;
  } else {
    hi |= 0x80000000;
  }
  out[offset] = hi >>> 24;
  out[offset + 1] = hi >>> 16;
  out[offset + 2] = hi >>> 8;
  out[offset + 3] = hi;
  out[offset + 4] = lo >>> 24;
  out[offset + 5] = lo >>> 16;
  out[offset + 6] = lo >>> 8;
  out[offset + 7] = lo;
}

export function readOrderedF64(bytes: Uint8Array, offset: number): number {
  let hi =
    (bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!;
  let lo =
    (bytes[offset + 4]! << 24) | (bytes[offset + 5]! << 16) | (bytes[offset + 6]! << 8) | bytes[offset + 7]!;
  if (hi & 0x80000000) {
    hi &= 0x7fffffff;
  } else {
    hi = ~hi;
    lo = ~lo;
  }
  f64Words[HI] = hi;
  f64Words[LO] = lo;
  return f64[0]!;
}

/** Byte-wise comparison of a[aOff, aOff+aLen) with b[bOff, bOff+bLen): <0, 0 or >0. */
export function compareBytes(
  a: Uint8Array,
  aOff: number,
  aLen: number,
  b: Uint8Array,
  bOff: number,
  bLen: number,
): number {
  const n = aLen < bLen ? aLen : bLen;
  for (let i = 0; i < n; i++) {
    const d = a[aOff + i]! - b[bOff + i]!;
    if (d !== 0) return d;
  }
  return aLen - bLen;
}

/**
 * 32-bit hash of a key's bytes. Short keys (the common case) are hashed in JS with a
 * murmur3-style mix, which costs less than the native call; keys of 64 bytes and more go to
 * xxh32 from @node-rs/xxhash.
 */
export function hashBytes(bytes: Uint8Array, offset: number, length: number, seed: number): number {
  if (length >= NATIVE_HASH_MIN) {
    return xxh32(Buffer.from(bytes.buffer, bytes.byteOffset + offset, length), seed);
  }
  let h = seed ^ length;
  let i = offset;
  const end = offset + length;
  for (; i + 4 <= end; i += 4) {
    const k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
    h = Math.imul(h ^ Math.imul(k, 0xcc9e2d51), 0x1b873593);
    h = (h << 13) | (h >>> 19);
  }
  let k = 0;
  for (let shift = 0; i < end; i++, shift += 8) k |= bytes[i]! << shift;
  h ^= Math.imul(k, 0xcc9e2d51);
  return mix32(h);
}

const NATIVE_HASH_MIN = 64;

/** murmur3's finaliser: every input bit affects every output bit. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function isWellFormed(key: string): boolean {
  return (key as unknown as { isWellFormed(): boolean }).isWellFormed();
}

function wrongKey(expected: string, key: unknown): MemfabricError {
  return new MemfabricError(
    ErrorCodes.HEAP_TYPE,
    `this collection's keys are ${expected}s; got ${key === null ? 'null' : typeof key}`,
  );
}
