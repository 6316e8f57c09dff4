/**
 * HeapHashMap: a persistent hash map that lives entirely in a heap's address space, so it is as
 * large as the heap (far larger than RAM under a pager), survives checkpoints and reopens with
 * `open(memory, address)`.
 *
 * Extendible hashing. A directory of 2^globalDepth bucket addresses (f64s, one allocation)
 * indexes buckets by the low bits of a key's 32-bit hash. A bucket is one page-sized node with a
 * local depth d <= globalDepth: every directory slot whose low d bits match the bucket's points at
 * it. A full bucket splits in two on hash bit d (the directory doubles first when d ==
 * globalDepth), so a lookup costs one directory read and one bucket, whatever the size, and
 * growing touches one bucket at a time (no rehash of the whole map).
 * A bucket whose entries all share every hash bit from d up (equal 32-bit hashes) cannot be
 * separated by splitting; it grows an overflow chain of further buckets instead. Each map draws a
 * random hash seed at creation, so equal hashes are chance, not something a caller can aim for.
 *
 * Invariants (check() verifies each):
 *   - for every directory slot j: bucket = dir[j], localDepth(bucket) <= globalDepth, and every
 *     entry's hash h in that bucket's chain has (h mod 2^d) == (j mod 2^d);
 *   - each key appears once; the sum of bucket counts == size;
 *   - an overflow bucket is never empty.
 * Deleting never merges buckets: a map that shrinks keeps its buckets until clear() or destroy().
 *
 * Layouts (little-endian):
 *   header (64 B)  u32 magic 'MFHM' | u8 version | u8 key kind | u8 value kind | u8 globalDepth |
 *                  f64 size | f64 directory | u32 seed | u32 bucket size | f64 changes
 *   bucket         u8 localDepth | u8 0 | u16 count | u32 used | f64 next overflow bucket (0: none) |
 *                  entries packed from byte 16: u32 hash | u16 key length | u8 value tag | u8 0 |
 *                  u16 entry size | value part (value-codec.ts) | key bytes
 *
 * Costs. get/set/has/delete of a number key allocate nothing (the value aside: msgpack values are
 * packed). A string key is UTF-8-encoded into a scratch buffer first (one pass, no allocation);
 * short keys are hashed in JS, keys of 64 bytes and more with xxh32 (@node-rs/xxhash).
 *
 * Iteration. entries()/keys()/values() walk the directory in order, one bucket at a time. Any
 * set, delete or clear on the map (through any handle) after an iterator started makes that
 * iterator's next call throw MF_CONFLICT: the map never yields a stale or repeated entry.
 */
import { randomInt } from 'node:crypto';
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { copyBytes, getF64, getU16, getU32, putF64, putU16, putU32 } from './bytes-le.js';
import { KEY_KIND_CODES, keyCodec, keyKindOf, type KeyCodec, type KeyKind, type KeyOf } from './key-codec.js';
import type { HeapMemory } from './memory.js';
import {
  NODE_SIZE_MAX,
  NODE_SIZE_MIN,
  inlineMaxFor,
  keyMaxFor,
  nodeSizeFor,
  type CheckResult,
  type CollectionOptions,
  type HeapKey,
} from './collection.js';
import { NodeIO } from './node-io.js';
import {
  TAG_BLOB,
  TAG_NUMBER,
  VALUE_KIND_CODES,
  ValueCodec,
  valueBlob,
  valueKindOf,
  valuePartSize,
  type ValueKind,
  type ValueOf,
} from './value-codec.js';

const MAGIC = 0x4d48464d; // 'MFHM' little-endian
const VERSION = 1;
const HEADER_BYTES = 64;
const H_MAGIC = 0;
const H_VERSION = 4;
const H_KEY_KIND = 5;
const H_VALUE_KIND = 6;
const H_DEPTH = 7;
const H_SIZE = 8;
const H_DIRECTORY = 16;
const H_SEED = 24;
const H_BUCKET_SIZE = 28;
const H_CHANGES = 32;

const B_DEPTH = 0;
const B_COUNT = 2;
const B_USED = 4;
const B_NEXT = 8;
const B_HEADER = 16;
/** Entry: u32 hash | u16 key length | u8 value tag | u8 0 | u16 entry size | value part | key. */
const ENTRY_HEADER = 10;
const E_SIZE = 8;

/** The directory may reach 2^DEPTH_MAX slots (8 GiB); splitting stops there and chains begin. */
const DEPTH_MAX = 30;
/** Bytes copied at a time when the directory doubles. */
const COPY_CHUNK = 64 * 1024;
/** Problems check() lists before it stops looking. */
const PROBLEMS_MAX = 100;

function maskOf(depth: number): number {
  return depth === 0 ? 0 : 0xffffffff >>> (32 - depth);
}

export class HeapHashMap<K extends HeapKey = HeapKey, V = unknown> {
  /** The map's header: store it (a root, a ref value) to find the map again with open(). */
  readonly address: number;
  readonly keyKind: KeyKind;
  readonly valueKind: ValueKind;
  readonly memory: HeapMemory;
  private readonly keyCodec: KeyCodec<K>;
  private readonly valueCodec: ValueCodec<V>;
  private readonly io: NodeIO;
  private readonly bucketSize: number;
  private readonly seed: number;
  private readonly work: Uint8Array;
  private destroyed = false;
  /** Set by find(): the bucket and offset of the entry found (offset -1: none). */
  private foundBucket = 0;
  private foundOffset = -1;
  private foundPrev = 0;

  /** A new empty map. Its header's address is `map.address`. */
  static create<KK extends KeyKind, VK extends ValueKind, V = unknown>(
    memory: HeapMemory,
    options: CollectionOptions<KK, VK>,
  ): HeapHashMap<KeyOf<KK>, ValueOf<VK, V>> {
    const keys = options.keys;
    const values = options.values;
    if (KEY_KIND_CODES[keys] === undefined) {
      throw invalidArgument(`keys must be 'string', 'number' or 'bytes', not ${JSON.stringify(keys)}`);
    }
    if (VALUE_KIND_CODES[values] === undefined) {
      throw invalidArgument(`values must be 'number', 'ref' or 'msgpack', not ${JSON.stringify(values)}`);
    }
    const bucketSize = nodeSizeFor(memory, options.nodeSize);
    const { space, allocator } = memory;
    const header = allocator.alloc(HEADER_BYTES);
    let directory = 0;
    try {
      directory = allocator.alloc(8);
      const bucket = allocator.alloc(bucketSize);
      writeEmptyBucket(memory, bucket, bucketSize, 0);
      space.writeF64(directory, bucket);
    } catch (error) {
      if (directory !== 0) allocator.free(directory);
      allocator.free(header);
      throw error;
    }
    space.write(header, new Uint8Array(HEADER_BYTES));
    space.writeU32(header + H_MAGIC, MAGIC);
    space.writeU8(header + H_VERSION, VERSION);
    space.writeU8(header + H_KEY_KIND, KEY_KIND_CODES[keys]);
    space.writeU8(header + H_VALUE_KIND, VALUE_KIND_CODES[values]);
    space.writeU8(header + H_DEPTH, 0);
    space.writeF64(header + H_SIZE, 0);
    space.writeF64(header + H_DIRECTORY, directory);
    space.writeU32(header + H_SEED, randomInt(0x100000000));
    space.writeU32(header + H_BUCKET_SIZE, bucketSize);
    space.writeF64(header + H_CHANGES, 0);
    return new HeapHashMap(memory, header) as unknown as HeapHashMap<KeyOf<KK>, ValueOf<VK, V>>;
  }

  /**
   * The map whose header is at `address`. `expect` (optional) states the key and value kinds the
   * caller assumes: a map of other kinds is refused with MF_HEAP_TYPE, as is an address that holds
   * no map.
   */
  static open<K extends HeapKey = HeapKey, V = unknown>(
    memory: HeapMemory,
    address: number,
    expect?: { keys?: KeyKind; values?: ValueKind },
  ): HeapHashMap<K, V> {
    const map = new HeapHashMap<K, V>(memory, address);
    if (expect?.keys !== undefined && expect.keys !== map.keyKind) {
      throw typeError(`the map at ${address} has ${map.keyKind} keys, not ${expect.keys} keys`);
    }
    if (expect?.values !== undefined && expect.values !== map.valueKind) {
      throw typeError(`the map at ${address} has ${map.valueKind} values, not ${expect.values} values`);
    }
    return map;
  }

  private constructor(memory: HeapMemory, address: number) {
    const space = memory.space;
    if (!Number.isSafeInteger(address) || address <= 0 || address + HEADER_BYTES > space.size) {
      throw invalidArgument(`${address} is not a heap address`);
    }
    if (space.readU32(address + H_MAGIC) !== MAGIC) {
      throw typeError(`the object at ${address} is not a hash map`);
    }
    if (space.readU8(address + H_VERSION) !== VERSION) {
      throw new MemfabricError(
        ErrorCodes.HEAP_FOREIGN,
        `the hash map at ${address} has format version ${space.readU8(address + H_VERSION)}; this memfabric reads version ${VERSION}`,
      );
    }
    const keyKind = keyKindOf(space.readU8(address + H_KEY_KIND));
    const valueKind = valueKindOf(space.readU8(address + H_VALUE_KIND));
    const bucketSize = space.readU32(address + H_BUCKET_SIZE);
    if (!keyKind || !valueKind || bucketSize < NODE_SIZE_MIN || bucketSize > NODE_SIZE_MAX) {
      throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `the hash map header at ${address} is damaged`);
    }
    this.memory = memory;
    this.address = address;
    this.keyKind = keyKind;
    this.valueKind = valueKind;
    this.bucketSize = bucketSize;
    this.seed = space.readU32(address + H_SEED);
    this.keyCodec = keyCodec(keyKind, keyMaxFor(bucketSize)) as KeyCodec<K>;
    this.valueCodec = new ValueCodec<V>(valueKind, inlineMaxFor(bucketSize));
    this.io = new NodeIO(space, bucketSize);
    this.work = Buffer.alloc(bucketSize);
  }

  /** Number of entries. */
  get size(): number {
    this.assertLive();
    return this.memory.space.readF64(this.address + H_SIZE);
  }

  /** The longest key this map accepts, in encoded bytes. */
  get keyMax(): number {
    return this.keyCodec.keyMax;
  }

  get(key: K): V | undefined {
    this.assertLive();
    if (!this.find(key)) return undefined;
    const view = this.io.view(this.foundBucket);
    const offset = this.foundOffset;
    return this.valueCodec.read(this.memory, view[offset + 6]!, view, offset + ENTRY_HEADER);
  }

  has(key: K): boolean {
    this.assertLive();
    return this.find(key);
  }

  /** Adds or replaces the entry for `key`. Returns the map (as Map.set does). */
  set(key: K, value: V): this {
    this.assertLive();
    const exists = this.find(key); // encodes the key into keyCodec
    const hash = this.hashOfKey;
    this.valueCodec.prepare(value);
    const keyLength = this.keyCodec.length;
    const entrySize = ENTRY_HEADER + this.valueCodec.partSize + keyLength;
    const space = this.memory.space;
    if (exists) {
      const bucket = this.foundBucket;
      const offset = this.foundOffset;
      const work = this.work;
      this.io.load(bucket, work);
      const oldSize = entrySizeAt(work, offset);
      const oldBlob = valueBlob(work[offset + 6]!, work, offset + ENTRY_HEADER);
      const used = getU32(work, B_USED);
      if (used - oldSize + entrySize <= this.bucketSize - B_HEADER) {
        this.valueCodec.storeBlob(this.memory);
        // Shift the entries after this one, then write the new entry at the end of the bucket.
        const end = B_HEADER + used;
        work.copyWithin(offset, offset + oldSize, end);
        const at = end - oldSize;
        this.writeEntry(work, at, hash);
        putU32(work, B_USED, used - oldSize + entrySize);
        this.io.store(bucket, work);
        if (oldBlob !== 0) this.memory.allocator.free(oldBlob);
        this.changed();
        return this;
      }
      // The new value does not fit beside the others: make room elsewhere first (this may
      // allocate, and fail, while the old entry is still in place), then move the entry.
      this.valueCodec.storeBlob(this.memory);
      try {
        this.reserve(hash, entrySize);
      } catch (error) {
        this.valueCodec.abandonBlob(this.memory);
        throw error;
      }
      // From here nothing allocates: the chain has a bucket with room, and removing only adds room.
      this.find(key); // splits may have moved it
      this.removeFound(this.foundBucket === this.reserve(hash, entrySize));
      this.place(this.reserve(hash, entrySize), hash, entrySize);
      this.changed();
      return this;
    }
    this.valueCodec.storeBlob(this.memory);
    try {
      this.place(this.reserve(hash, entrySize), hash, entrySize);
    } catch (error) {
      this.valueCodec.abandonBlob(this.memory);
      throw error;
    }
    space.writeF64(this.address + H_SIZE, this.size + 1);
    this.changed();
    return this;
  }

  /** Removes the entry for `key`; true when there was one. */
  delete(key: K): boolean {
    this.assertLive();
    if (!this.find(key)) return false;
    this.removeFound();
    const space = this.memory.space;
    space.writeF64(this.address + H_SIZE, this.size - 1);
    this.changed();
    return true;
  }

  /** Removes every entry, returning all buckets but one (and their blobs) to the allocator. */
  clear(): void {
    this.assertLive();
    const { space, allocator } = this.memory;
    const bucket = allocator.alloc(this.bucketSize);
    const directory = allocator.alloc(8);
    writeEmptyBucket(this.memory, bucket, this.bucketSize, 0);
    space.writeF64(directory, bucket);
    const oldDirectory = space.readF64(this.address + H_DIRECTORY);
    const oldDepth = space.readU8(this.address + H_DEPTH);
    space.writeF64(this.address + H_DIRECTORY, directory);
    space.writeU8(this.address + H_DEPTH, 0);
    space.writeF64(this.address + H_SIZE, 0);
    this.freeBuckets(oldDirectory, oldDepth);
    this.changed();
  }

  /** Frees the map: every bucket, blob, the directory and the header. The handle is dead after. */
  destroy(): void {
    this.assertLive();
    const space = this.memory.space;
    this.freeBuckets(space.readF64(this.address + H_DIRECTORY), space.readU8(this.address + H_DEPTH));
    space.writeU32(this.address + H_MAGIC, 0); // a stale handle or open() of it fails cleanly
    this.memory.allocator.free(this.address);
    this.destroyed = true;
  }

  /** [key, value] pairs in directory order (see the overview for changes during iteration). */
  entries(): IterableIterator<[K, V]> {
    return this.iterate(true, (key, value) => [key, value] as [K, V]);
  }

  keys(): IterableIterator<K> {
    return this.iterate(false, (key) => key);
  }

  values(): IterableIterator<V> {
    return this.iterate(true, (_key, value) => value);
  }

  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.entries();
  }

  /** Verifies the invariants listed in the overview; the heap's check() calls this. */
  check(): CheckResult {
    const problems: string[] = [];
    const report = (message: string): void => {
      if (problems.length < PROBLEMS_MAX) problems.push(message);
    };
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    const directory = space.readF64(this.address + H_DIRECTORY);
    const slots = 2 ** depth;
    let count = 0;
    const work = Buffer.alloc(this.bucketSize);
    for (let j = 0; j < slots && problems.length < PROBLEMS_MAX; j++) {
      const bucket = space.readF64(directory + j * 8);
      this.io.load(bucket, work);
      const local = work[B_DEPTH]!;
      if (local > depth) {
        report(`bucket ${bucket} (slot ${j}) has local depth ${local} above the global depth ${depth}`);
        continue;
      }
      const canonical = j & maskOf(local);
      if (canonical !== j) {
        const first = space.readF64(directory + canonical * 8);
        if (first !== bucket)
          report(`slot ${j} points at bucket ${bucket} but slot ${canonical} at ${first}`);
        continue; // counted at its canonical slot
      }
      const seen = new Set<string>();
      let page = bucket;
      let pages = 0;
      while (page !== 0 && problems.length < PROBLEMS_MAX) {
        if (page !== bucket) this.io.load(page, work);
        if (++pages > 1 << 20) {
          report(`bucket ${bucket}'s overflow chain does not end`);
          break;
        }
        const n = getU16(work, B_COUNT);
        const used = getU32(work, B_USED);
        if (page !== bucket && n === 0) report(`overflow bucket ${page} of slot ${j} is empty`);
        if (B_HEADER + used > this.bucketSize) {
          report(`bucket ${page} claims ${used} bytes of entries; it holds ${this.bucketSize - B_HEADER}`);
          break;
        }
        let offset = B_HEADER;
        for (let i = 0; i < n; i++) {
          if (offset + ENTRY_HEADER > B_HEADER + used) {
            report(`bucket ${page} has fewer entries than its count ${n}`);
            break;
          }
          const tag = work[offset + 6]!;
          if (tag < TAG_NUMBER || tag > TAG_BLOB) report(`bucket ${page} entry ${i} has value tag ${tag}`);
          const size = entrySizeAt(work, offset);
          const parsed =
            ENTRY_HEADER + valuePartSize(tag, work, offset + ENTRY_HEADER) + getU16(work, offset + 4);
          if (size !== parsed) {
            report(`bucket ${page} entry ${i} records ${size} bytes but its fields take ${parsed}`);
            break;
          }
          if (offset + size > B_HEADER + used) {
            report(
              `bucket ${page} entry ${i} (${size} bytes at ${offset}) runs past the bucket's ${used} bytes`,
            );
            break;
          }
          const keyLength = getU16(work, offset + 4);
          const keyAt = offset + size - keyLength;
          const hash = getU32(work, offset);
          const actual = this.keyCodec.hashAt(work, keyAt, keyLength, this.seed);
          if (hash !== actual)
            report(`bucket ${page} entry ${i} records hash ${hash}, its key hashes to ${actual}`);
          if ((hash & maskOf(local)) >>> 0 !== j) {
            report(
              `bucket ${page} entry ${i} (hash ${hash}) belongs in slot ${(hash & maskOf(depth)) >>> 0}, not ${j}`,
            );
          }
          const id = work.subarray(keyAt, keyAt + keyLength).toString('hex');
          if (seen.has(id)) report(`bucket ${page} holds key ${id} twice`);
          seen.add(id);
          if (tag === TAG_BLOB) {
            const blob = getF64(work, offset + ENTRY_HEADER + 4);
            const length = getU32(work, offset + ENTRY_HEADER);
            try {
              if (this.memory.allocator.usableSize(blob) < length)
                report(`blob ${blob} is shorter than ${length}`);
            } catch (error) {
              report(
                `entry ${i} of bucket ${page} names blob ${blob}, which is not an object: ${String(error)}`,
              );
            }
          }
          offset += size;
          count++;
        }
        if (offset !== B_HEADER + used)
          report(`bucket ${page}'s entries end at ${offset}, not ${B_HEADER + used}`);
        page = getF64(work, B_NEXT);
      }
    }
    const size = space.readF64(this.address + H_SIZE);
    if (problems.length === 0 && count !== size)
      report(`the map records size ${size} but holds ${count} entries`);
    return { ok: problems.length === 0, problems };
  }

  // ---------------------------------------------------------------------------------------------
  // Internals

  /** Hash of the key find() encoded last. */
  private hashOfKey = 0;

  /** Looks `key` up; sets foundBucket/foundOffset/foundPrev and hashOfKey. */
  private find(key: K): boolean {
    const codec = this.keyCodec;
    codec.encode(key);
    const hash = codec.hash(this.seed);
    this.hashOfKey = hash;
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    const directory = space.readF64(this.address + H_DIRECTORY);
    let bucket = space.readF64(directory + ((hash & maskOf(depth)) >>> 0) * 8);
    let prev = 0;
    const keyBytes = codec.bytes;
    const keyLength = codec.length;
    while (bucket !== 0) {
      const view = this.io.view(bucket);
      const n = view[B_COUNT]! | (view[B_COUNT + 1]! << 8);
      let offset = B_HEADER;
      for (let i = 0; i < n; i++) {
        const size = view[offset + E_SIZE]! | (view[offset + E_SIZE + 1]! << 8);
        if (
          (view[offset]! |
            (view[offset + 1]! << 8) |
            (view[offset + 2]! << 16) |
            (view[offset + 3]! << 24)) >>>
            0 ===
          hash
        ) {
          const length = view[offset + 4]! | (view[offset + 5]! << 8);
          if (length === keyLength && sameBytes(view, offset + size - length, keyBytes, keyLength)) {
            this.foundBucket = bucket;
            this.foundOffset = offset;
            this.foundPrev = prev;
            return true;
          }
        }
        offset += size;
      }
      prev = bucket;
      bucket = getF64(view, B_NEXT);
    }
    this.foundOffset = -1;
    return false;
  }

  /** Writes the prepared entry (key in keyCodec, value in valueCodec) at work[at]. */
  private writeEntry(work: Uint8Array, at: number, hash: number): void {
    putU32(work, at, hash);
    putU16(work, at + 4, this.keyCodec.length);
    work[at + 6] = this.valueCodec.tag;
    work[at + 7] = 0;
    putU16(work, at + E_SIZE, ENTRY_HEADER + this.valueCodec.partSize + this.keyCodec.length);
    this.valueCodec.writePart(work, at + ENTRY_HEADER);
    copyBytes(
      this.keyCodec.bytes,
      0,
      work,
      at + ENTRY_HEADER + this.valueCodec.partSize,
      this.keyCodec.length,
    );
  }

  /**
   * Removes the entry find() found, freeing its blob and (unless `keepEmpty`, when the caller is
   * about to fill it) an overflow bucket it empties.
   */
  private removeFound(keepEmpty = false): void {
    const bucket = this.foundBucket;
    const offset = this.foundOffset;
    const prev = this.foundPrev;
    const work = this.work;
    const { space, allocator } = this.memory;
    this.io.load(bucket, work);
    const size = entrySizeAt(work, offset);
    const blob = valueBlob(work[offset + 6]!, work, offset + ENTRY_HEADER);
    const used = getU32(work, B_USED);
    const count = getU16(work, B_COUNT) - 1;
    work.copyWithin(offset, offset + size, B_HEADER + used);
    work.fill(0, B_HEADER + used - size, B_HEADER + used);
    putU32(work, B_USED, used - size);
    putU16(work, B_COUNT, count);
    const next = getF64(work, B_NEXT);
    if (keepEmpty) {
      this.io.store(bucket, work);
    } else if (count === 0 && prev !== 0) {
      // An emptied overflow bucket leaves the chain.
      space.writeF64(prev + B_NEXT, next);
      allocator.free(bucket);
    } else if (count === 0 && next !== 0) {
      // An emptied head takes over its first overflow bucket (the directory keeps pointing at it).
      this.io.load(next, work);
      work[B_DEPTH] = space.readU8(bucket + B_DEPTH);
      this.io.store(bucket, work);
      allocator.free(next);
    } else {
      this.io.store(bucket, work);
    }
    if (blob !== 0) allocator.free(blob);
  }

  /**
   * A bucket of `hash`'s chain with room for `entrySize` bytes, splitting the chain or appending
   * an (empty) overflow bucket to make one. Each split is complete on its own, so MF_HEAP_FULL
   * leaves a consistent map with every entry in place.
   */
  private reserve(hash: number, entrySize: number): number {
    const { space, allocator } = this.memory;
    const capacity = this.bucketSize - B_HEADER;
    for (;;) {
      const depth = space.readU8(this.address + H_DEPTH);
      const directory = space.readF64(this.address + H_DIRECTORY);
      const slot = (hash & maskOf(depth)) >>> 0;
      const head = space.readF64(directory + slot * 8);
      let bucket = head;
      let last = head;
      while (bucket !== 0) {
        if (space.readU32(bucket + B_USED) + entrySize <= capacity) return bucket;
        last = bucket;
        bucket = space.readF64(bucket + B_NEXT);
      }
      const local = space.readU8(head + B_DEPTH);
      if (local < DEPTH_MAX && this.separable(head, hash, local)) {
        this.split(head, slot, local, depth);
        continue;
      }
      // Equal hashes from bit `local` up: only a chain can hold them.
      const overflow = allocator.alloc(this.bucketSize);
      writeEmptyBucket(this.memory, overflow, this.bucketSize, local);
      space.writeF64(last + B_NEXT, overflow);
      return overflow;
    }
  }

  /** Appends the prepared entry (its blob stored) to `bucket`, which reserve() said has room. */
  private place(bucket: number, hash: number, entrySize: number): void {
    const work = this.work;
    this.io.load(bucket, work);
    const used = getU32(work, B_USED);
    this.writeEntry(work, B_HEADER + used, hash);
    putU32(work, B_USED, used + entrySize);
    putU16(work, B_COUNT, getU16(work, B_COUNT) + 1);
    this.io.store(bucket, work);
  }

  /** True when some entry of the chain (or the new hash) differs from the others in a bit >= local. */
  private separable(head: number, hash: number, local: number): boolean {
    let differ = 0;
    let bucket = head;
    while (bucket !== 0) {
      const view = this.io.view(bucket);
      const n = getU16(view, B_COUNT);
      let offset = B_HEADER;
      for (let i = 0; i < n; i++) {
        differ |= getU32(view, offset) ^ hash;
        offset += entrySizeAt(view, offset);
      }
      bucket = getF64(view, B_NEXT);
    }
    return differ >>> local !== 0;
  }

  /**
   * Splits the chain at `head` (local depth `local`) on hash bit `local`: entries with the bit set
   * move to a new bucket (plus overflow buckets if they need them). Allocates everything first, so
   * MF_HEAP_FULL leaves the map as it was.
   */
  private split(head: number, slot: number, local: number, depth: number): void {
    const { space, allocator } = this.memory;
    const capacity = this.bucketSize - B_HEADER;
    // Gather the chain's entries (a copy: the buckets are rewritten below).
    const chain: number[] = [];
    const entries: Uint8Array[] = [];
    for (let bucket = head; bucket !== 0;) {
      chain.push(bucket);
      const view = this.io.view(bucket);
      const n = getU16(view, B_COUNT);
      let offset = B_HEADER;
      for (let i = 0; i < n; i++) {
        const size = entrySizeAt(view, offset);
        entries.push(Uint8Array.prototype.slice.call(view, offset, offset + size)); // a copy, not a view
        offset += size;
      }
      bucket = getF64(view, B_NEXT);
    }
    const bit = 2 ** local;
    const low = entries.filter((entry) => (getU32(entry, 0) & bit) === 0);
    const high = entries.filter((entry) => (getU32(entry, 0) & bit) !== 0);
    const lowPages = pagesFor(low, capacity);
    const highPages = pagesFor(high, capacity);
    // Allocate what the two chains need beyond the buckets already in this one.
    const fresh: number[] = [];
    try {
      if (local === depth) fresh.push(this.growDirectoryFirst());
      for (let i = chain.length; i < lowPages + highPages; i++) fresh.push(allocator.alloc(this.bucketSize));
    } catch (error) {
      for (const address of fresh) allocator.free(address);
      throw error;
    }
    if (local === depth) {
      this.doubleDirectory(fresh.shift()!, depth);
      depth++;
    }
    const pool = chain.slice(1).concat(fresh);
    const highHead = pool.pop()!;
    this.writeChain(head, low, local + 1, pool);
    this.writeChain(highHead, high, local + 1, pool);
    for (const address of pool) allocator.free(address);
    // Point the directory slots of the high half at the new bucket.
    const directory = space.readF64(this.address + H_DIRECTORY);
    const base = ((slot & maskOf(local)) >>> 0) + bit;
    const step = bit * 2;
    const slots = 2 ** depth;
    for (let j = base; j < slots; j += step) space.writeF64(directory + j * 8, highHead);
  }

  /** Writes `entries` as a chain starting at `head`, taking overflow buckets from `pool`. */
  private writeChain(head: number, entries: Uint8Array[], local: number, pool: number[]): void {
    const capacity = this.bucketSize - B_HEADER;
    const work = this.work;
    let bucket = head;
    let index = 0;
    for (;;) {
      work.fill(0);
      work[B_DEPTH] = local;
      let used = 0;
      let count = 0;
      while (index < entries.length && used + entries[index]!.length <= capacity) {
        work.set(entries[index]!, B_HEADER + used);
        used += entries[index]!.length;
        count++;
        index++;
      }
      putU32(work, B_USED, used);
      putU16(work, B_COUNT, count);
      const next = index < entries.length ? pool.pop()! : 0;
      putF64(work, B_NEXT, next);
      this.io.store(bucket, work);
      if (next === 0) return;
      bucket = next;
    }
  }

  /** Allocates the doubled directory (before anything changes). */
  private growDirectoryFirst(): number {
    const depth = this.memory.space.readU8(this.address + H_DEPTH);
    return this.memory.allocator.alloc(2 ** (depth + 1) * 8);
  }

  /** Copies the directory twice into `grown` and makes it the map's directory. */
  private doubleDirectory(grown: number, depth: number): void {
    const { space, allocator } = this.memory;
    const old = space.readF64(this.address + H_DIRECTORY);
    const bytes = 2 ** depth * 8;
    const chunk = Buffer.alloc(Math.min(bytes, COPY_CHUNK));
    for (let done = 0; done < bytes; done += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, bytes - done));
      space.read(old + done, part);
      space.write(grown + done, part);
      space.write(grown + bytes + done, part);
    }
    space.writeF64(this.address + H_DIRECTORY, grown);
    space.writeU8(this.address + H_DEPTH, depth + 1);
    allocator.free(old);
  }

  /** Frees every bucket (each chain once), its blobs, and the directory. */
  private freeBuckets(directory: number, depth: number): void {
    const { space, allocator } = this.memory;
    const slots = 2 ** depth;
    for (let j = 0; j < slots; j++) {
      const bucket = space.readF64(directory + j * 8);
      if ((j & maskOf(space.readU8(bucket + B_DEPTH))) >>> 0 !== j) continue; // not its first slot
      for (let page = bucket; page !== 0;) {
        const view = this.io.view(page);
        const n = getU16(view, B_COUNT);
        const next = getF64(view, B_NEXT);
        const blobs: number[] = [];
        let offset = B_HEADER;
        for (let i = 0; i < n; i++) {
          const blob = valueBlob(view[offset + 6]!, view, offset + ENTRY_HEADER);
          if (blob !== 0) blobs.push(blob);
          offset += entrySizeAt(view, offset);
        }
        for (const blob of blobs) allocator.free(blob);
        allocator.free(page);
        page = next;
      }
    }
    allocator.free(directory);
  }

  /** Entries bucket by bucket; refuses to go on once the map changed after this call. */
  private iterate<T>(withValues: boolean, make: (key: K, value: V) => T): IterableIterator<T> {
    this.assertLive();
    const space = this.memory.space;
    const changes = space.readF64(this.address + H_CHANGES);
    const verify = (): void => {
      this.assertLive();
      if (space.readF64(this.address + H_CHANGES) !== changes) {
        throw new MemfabricError(
          ErrorCodes.CONFLICT,
          'the hash map changed while it was being iterated; collect the keys first, then change the map',
        );
      }
    };
    return this.walk(withValues, make, verify);
  }

  private *walk<T>(withValues: boolean, make: (key: K, value: V) => T, verify: () => void): Generator<T> {
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    const directory = space.readF64(this.address + H_DIRECTORY);
    const slots = 2 ** depth;
    const work = Buffer.alloc(this.bucketSize);
    const keys: K[] = [];
    const values: V[] = [];
    for (let j = 0; j < slots; j++) {
      verify();
      const bucket = space.readF64(directory + j * 8);
      if ((j & maskOf(space.readU8(bucket + B_DEPTH))) >>> 0 !== j) continue;
      for (let page = bucket; page !== 0;) {
        this.io.load(page, work);
        const n = getU16(work, B_COUNT);
        keys.length = 0;
        values.length = 0;
        let offset = B_HEADER;
        for (let i = 0; i < n; i++) {
          const size = entrySizeAt(work, offset);
          const keyLength = getU16(work, offset + 4);
          keys.push(this.keyCodec.decode(work, offset + size - keyLength, keyLength));
          if (withValues) {
            values.push(this.valueCodec.read(this.memory, work[offset + 6]!, work, offset + ENTRY_HEADER));
          }
          offset += size;
        }
        page = getF64(work, B_NEXT);
        for (let i = 0; i < n; i++) {
          verify();
          yield make(keys[i]!, values[i]!);
        }
      }
    }
  }

  private changed(): void {
    const space = this.memory.space;
    space.writeF64(this.address + H_CHANGES, space.readF64(this.address + H_CHANGES) + 1);
  }

  private assertLive(): void {
    if (this.destroyed) {
      throw new MemfabricError(ErrorCodes.DESTROYED, 'this hash map was destroyed; create a new one');
    }
  }
}

function writeEmptyBucket(memory: HeapMemory, bucket: number, bucketSize: number, local: number): void {
  const bytes = new Uint8Array(bucketSize);
  bytes[B_DEPTH] = local;
  memory.space.write(bucket, bytes);
}

function entrySizeAt(bytes: Uint8Array, offset: number): number {
  return getU16(bytes, offset + E_SIZE);
}

function sameBytes(a: Uint8Array, aOff: number, b: Uint8Array, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aOff + i] !== b[i]) return false;
  return true;
}

/** Buckets a chain of `entries` needs when filled in order. */
function pagesFor(entries: Uint8Array[], capacity: number): number {
  let pages = 1;
  let used = 0;
  for (const entry of entries) {
    if (used + entry.length > capacity) {
      pages++;
      used = 0;
    }
    used += entry.length;
  }
  return pages;
}

function typeError(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.HEAP_TYPE, message);
}
