/**
 * Type tags: the first four bytes of every struct instance and blob in the heap say what it is,
 * so that reading an address as the wrong kind of value fails with MF_HEAP_TYPE instead of
 * returning garbage.
 *
 * A struct's tag is a 32-bit hash of its schema (name and layout, see struct.ts); a blob's
 * tag is one of the fixed constants below. Tag 0 is never used: zero-filled memory, and an
 * object whose tag was cleared when it was freed, is "nothing". Struct tags are steered
 * away from the reserved constants, so a struct can never be taken for a blob, and from
 * every value below 2^16, so the small integers an allocator writes over a freed block's
 * first bytes (the heap's writes a free-list link there) never pass for a tag.
 *
 * The registry maps the tags this process knows to a name, only to make error messages say
 * what was found ("a Line", "a msgpack blob") rather than a number.
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import type { AddressSpace } from '../memory/address-space.js';

/** Tag of a self-contained msgpack blob (putValue). The bytes spell "MFB1" in memory. */
export const BLOB_TAG = 0x3142464d;
/** Tag of a blob whose records refer to a BlobCodec's shared structures. "MFB2". */
export const SHARED_BLOB_TAG = 0x3242464d;
/** Tag of a BlobCodec's own header object. "MFBC". */
export const CODEC_TAG = 0x4342464d;

const reserved = new Set<number>([0, BLOB_TAG, SHARED_BLOB_TAG, CODEC_TAG]);
const names = new Map<number, string>([
  [BLOB_TAG, 'a msgpack blob (putValue)'],
  [SHARED_BLOB_TAG, 'a msgpack blob of a BlobCodec'],
  [CODEC_TAG, 'a BlobCodec header'],
]);

/** Tags below this are never used (small integers: free-list links, counts, zero). */
const TAG_MIN = 0x10000;

/** True for tags no struct may take. */
export function isReservedTag(tag: number): boolean {
  return tag < TAG_MIN || reserved.has(tag);
}

/** Records what a struct tag means, for error messages. */
export function registerTag(tag: number, name: string): void {
  names.set(tag, name);
}

/** What a tag read from the heap denotes, in words. */
export function describeTag(tag: number): string {
  if (tag === 0) return 'no value (freed memory, or memory never written as a value)';
  const name = names.get(tag);
  return (
    name ??
    `an unknown tag 0x${tag.toString(16).padStart(8, '0')} (not a value, or a struct schema this process has not declared)`
  );
}

/** The MF_HEAP_TYPE error for reading `address` as `expected` when its tag says otherwise. */
export function wrongTypeError(address: number, expected: string, foundTag: number): MemfabricError {
  if (address === 0) {
    return new MemfabricError(
      ErrorCodes.HEAP_TYPE,
      `address 0 is the null reference, not ${expected}; check the reference before following it`,
    );
  }
  return new MemfabricError(
    ErrorCodes.HEAP_TYPE,
    `the value at address ${address} is ${describeTag(foundTag)}, not ${expected}; ` +
      'read it with the schema or codec it was written with (a changed struct declaration is a new schema)',
  );
}

/**
 * The tag at `address` (0 for address 0, the null reference). A non-number address is refused
 * here: the space's accessors would otherwise coerce a string such as "16" and read elsewhere.
 */
export function readTag(space: AddressSpace, address: number): number {
  if (typeof address !== 'number') {
    throw invalidArgument(`a heap address is a number, got ${typeof address} ${String(address)}`);
  }
  return address === 0 ? 0 : space.readU32(address);
}

/** FNV-1a over a string's UTF-16 code units: a stable 32-bit hash with no dependency. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
