/**
 * HeapBTree: a persistent ordered map (a B+tree) that lives entirely in a heap's address space:
 * as large as the heap (far larger than RAM under a pager), checkpointed with it, reopened with
 * `open(memory, address)`.
 *
 * Shape. Nodes are page-sized (nodeSize, default the space's page size) slotted pages: a header,
 * an array of u16 slot offsets growing up, entries packed from the end growing down. Entries hold
 * variable-length keys inline (keys are limited to a quarter node less a header: 1008 bytes with 4
 * KiB nodes) so a node always holds at least three, and a split always finds a balanced cut.
 * Leaves hold keys and values (value-codec.ts: numbers and refs inline, msgpack inline up to an
 * eighth of a node, in a blob beyond) and are doubly linked, so range scans walk leaves without
 * going back up. Branches hold separator keys and child addresses: child0 covers keys below the
 * first separator, the child of separator i covers keys >= separator i (and below the next one).
 *
 * Splitting. An insert that does not fit (after compacting the node's holes) splits the node at
 * the cut that best balances bytes; the right half's first key goes up as separator (a branch
 * split moves its middle separator up instead). Splits may climb to the root, which then grows a
 * new root. Every node a split may need is allocated before anything is written, so MF_HEAP_FULL
 * leaves the tree as it was.
 *
 * Deleting (the policy: merge, no borrowing). After a delete, a node under a quarter full is
 * merged with a sibling under the same parent when both fit in one node (a branch merge pulls the
 * parent's separator down). An emptied leaf always goes: it merges (an empty node always fits) or,
 * when it is its parent's only child, the whole single-child chain above it is cut out of the
 * nearest ancestor with other children. A root branch left with one child is replaced by that
 * child. So: no non-root leaf is empty, a branch has at least one child, all leaves are at the
 * same depth. Deleting never allocates.
 *
 * Invariants (check() verifies each): keys strictly increase within a node and across the leaf
 * chain; every key of a subtree lies within its separators' bounds; every node's entries lie
 * between its slot array and its end; leaves are all at depth `depth`, none but the root empty;
 * leaf links are the in-order sequence; the leaf entries add up to `size`.
 *
 * Iteration. range() and its friends are cursors that remember the last key they returned. When
 * the tree changed since (through any handle), the cursor seeks again, just past that key. So a
 * loop that sets or deletes while it iterates is defined: it yields every key that stays in the
 * tree from start to finish exactly once, in order, and never a deleted one; a key inserted
 * ahead of the cursor is yielded, one inserted behind it is not.
 *
 * Layouts (little-endian):
 *   header (64 B)  u32 magic 'MFBT' | u8 version | u8 key kind | u8 value kind | u8 depth |
 *                  f64 size | f64 root | u32 node size | u32 0 | f64 changes
 *   node           u8 kind (1 leaf, 2 branch) | u8 0 | u16 count | u32 data start |
 *                  f64 prev leaf (leaf) or child0 (branch) | f64 next leaf | 8 bytes 0 |
 *                  u16 slots[count] ... free ... entries
 *   leaf entry     u16 key length | u8 value tag | value part | key
 *   branch entry   u16 key length | f64 child | key
 */
import { ErrorCodes, MemfabricError, invalidArgument } from '../errors.js';
import { copyBytes, getF64, getU16, getU32, putF64, putU16, putU32 } from './bytes-le.js';
import {
  KEY_KIND_CODES,
  compareBytes,
  keyCodec,
  keyKindOf,
  type KeyCodec,
  type KeyKind,
  type KeyOf,
} from './key-codec.js';
import type { HeapMemory } from './memory.js';
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

const MAGIC = 0x5442464d; // 'MFBT' little-endian
const VERSION = 1;
const HEADER_BYTES = 64;
const H_MAGIC = 0;
const H_VERSION = 4;
const H_KEY_KIND = 5;
const H_VALUE_KIND = 6;
const H_DEPTH = 7;
const H_SIZE = 8;
const H_ROOT = 16;
const H_NODE_SIZE = 24;
const H_CHANGES = 32;

const LEAF = 1;
const BRANCH = 2;
const N_KIND = 0;
const N_COUNT = 2;
const N_DATA = 4;
/** prev leaf in a leaf, child0 in a branch */
const N_LINK = 8;
const N_NEXT = 16;
const N_HEADER = 32;
const BRANCH_ENTRY_HEADER = 10;
const LEAF_ENTRY_HEADER = 3;
/** Deeper than any tree of 2^53 entries in nodes of three or more. */
const DEPTH_MAX = 48;
const PROBLEMS_MAX = 100;

/** Bounds and direction of a range scan. Keys compare by their encoded bytes (see key-codec.ts). */
export interface RangeOptions<K> {
  gt?: K;
  gte?: K;
  lt?: K;
  lte?: K;
  reverse?: boolean;
  /** At most this many entries. */
  limit?: number;
}

export class HeapBTree<K extends HeapKey = HeapKey, V = unknown> {
  /** The tree's header: store it (a root, a ref value) to find the tree again with open(). */
  readonly address: number;
  readonly keyKind: KeyKind;
  readonly valueKind: ValueKind;
  readonly memory: HeapMemory;
  readonly nodeSize: number;
  private readonly keyCodec: KeyCodec<K>;
  private readonly valueCodec: ValueCodec<V>;
  private readonly io: NodeIO;
  private readonly capacity: number;
  private readonly work: Uint8Array;
  private readonly work2: Uint8Array;
  /** A new entry being placed (leaf or branch entry bytes). */
  private readonly entry: Uint8Array;
  /** Entries of an overfull node during a split, or of two nodes during a merge. */
  private readonly stage: Uint8Array;
  private readonly stageOffset: Int32Array;
  private readonly stageSize: Int32Array;
  private readonly pathNode = new Float64Array(DEPTH_MAX);
  private readonly pathIndex = new Int32Array(DEPTH_MAX);
  private destroyed = false;
  /** Set by lowerBound(). */
  private exact = false;

  static create<KK extends KeyKind, VK extends ValueKind, V = unknown>(
    memory: HeapMemory,
    options: CollectionOptions<KK, VK>,
  ): HeapBTree<KeyOf<KK>, ValueOf<VK, V>> {
    const keys = options.keys;
    const values = options.values;
    if (KEY_KIND_CODES[keys] === undefined) {
      throw invalidArgument(`keys must be 'string', 'number' or 'bytes', not ${JSON.stringify(keys)}`);
    }
    if (VALUE_KIND_CODES[values] === undefined) {
      throw invalidArgument(`values must be 'number', 'ref' or 'msgpack', not ${JSON.stringify(values)}`);
    }
    const nodeSize = nodeSizeFor(memory, options.nodeSize);
    const { space, allocator } = memory;
    const header = allocator.alloc(HEADER_BYTES);
    let root: number;
    try {
      root = allocator.alloc(nodeSize);
    } catch (error) {
      allocator.free(header);
      throw error;
    }
    space.write(root, emptyNode(nodeSize, LEAF));
    space.write(header, new Uint8Array(HEADER_BYTES));
    space.writeU32(header + H_MAGIC, MAGIC);
    space.writeU8(header + H_VERSION, VERSION);
    space.writeU8(header + H_KEY_KIND, KEY_KIND_CODES[keys]);
    space.writeU8(header + H_VALUE_KIND, VALUE_KIND_CODES[values]);
    space.writeU8(header + H_DEPTH, 1);
    space.writeF64(header + H_SIZE, 0);
    space.writeF64(header + H_ROOT, root);
    space.writeU32(header + H_NODE_SIZE, nodeSize);
    space.writeF64(header + H_CHANGES, 0);
    return new HeapBTree(memory, header) as unknown as HeapBTree<KeyOf<KK>, ValueOf<VK, V>>;
  }

  /**
   * The tree whose header is at `address`. `expect` (optional) states the key and value kinds the
   * caller assumes: a tree of other kinds is refused with MF_HEAP_TYPE, as is an address that
   * holds no tree.
   */
  static open<K extends HeapKey = HeapKey, V = unknown>(
    memory: HeapMemory,
    address: number,
    expect?: { keys?: KeyKind; values?: ValueKind },
  ): HeapBTree<K, V> {
    const tree = new HeapBTree<K, V>(memory, address);
    if (expect?.keys !== undefined && expect.keys !== tree.keyKind) {
      throw typeError(`the tree at ${address} has ${tree.keyKind} keys, not ${expect.keys} keys`);
    }
    if (expect?.values !== undefined && expect.values !== tree.valueKind) {
      throw typeError(`the tree at ${address} has ${tree.valueKind} values, not ${expect.values} values`);
    }
    return tree;
  }

  private constructor(memory: HeapMemory, address: number) {
    const space = memory.space;
    if (!Number.isSafeInteger(address) || address <= 0 || address + HEADER_BYTES > space.size) {
      throw invalidArgument(`${address} is not a heap address`);
    }
    if (space.readU32(address + H_MAGIC) !== MAGIC)
      throw typeError(`the object at ${address} is not a B+tree`);
    if (space.readU8(address + H_VERSION) !== VERSION) {
      throw new MemfabricError(
        ErrorCodes.HEAP_FOREIGN,
        `the B+tree at ${address} has format version ${space.readU8(address + H_VERSION)}; this memfabric reads version ${VERSION}`,
      );
    }
    const keyKind = keyKindOf(space.readU8(address + H_KEY_KIND));
    const valueKind = valueKindOf(space.readU8(address + H_VALUE_KIND));
    const nodeSize = space.readU32(address + H_NODE_SIZE);
    if (!keyKind || !valueKind || nodeSize < NODE_SIZE_MIN || nodeSize > NODE_SIZE_MAX) {
      throw new MemfabricError(ErrorCodes.HEAP_CORRUPT, `the B+tree header at ${address} is damaged`);
    }
    this.memory = memory;
    this.address = address;
    this.keyKind = keyKind;
    this.valueKind = valueKind;
    this.nodeSize = nodeSize;
    this.capacity = nodeSize - N_HEADER;
    this.keyCodec = keyCodec(keyKind, keyMaxFor(nodeSize)) as KeyCodec<K>;
    this.valueCodec = new ValueCodec<V>(valueKind, inlineMaxFor(nodeSize));
    this.io = new NodeIO(space, nodeSize);
    this.work = Buffer.alloc(nodeSize);
    this.work2 = Buffer.alloc(nodeSize);
    this.entry = Buffer.alloc(nodeSize);
    this.stage = Buffer.alloc(nodeSize * 3);
    this.stageOffset = new Int32Array(nodeSize);
    this.stageSize = new Int32Array(nodeSize);
  }

  get size(): number {
    this.assertLive();
    return this.memory.space.readF64(this.address + H_SIZE);
  }

  /** The longest key this tree accepts, in encoded bytes. */
  get keyMax(): number {
    return this.keyCodec.keyMax;
  }

  get(key: K): V | undefined {
    this.assertLive();
    this.keyCodec.encode(key);
    const leaf = this.seekLeaf(this.keyCodec.bytes, this.keyCodec.length, false);
    const view = this.io.view(leaf);
    const i = this.lowerBound(view, LEAF, this.keyCodec.bytes, this.keyCodec.length);
    if (!this.exact) return undefined;
    const at = getU16(view, N_HEADER + 2 * i);
    return this.valueCodec.read(this.memory, view[at + 2]!, view, at + LEAF_ENTRY_HEADER);
  }

  has(key: K): boolean {
    this.assertLive();
    this.keyCodec.encode(key);
    const leaf = this.seekLeaf(this.keyCodec.bytes, this.keyCodec.length, false);
    this.lowerBound(this.io.view(leaf), LEAF, this.keyCodec.bytes, this.keyCodec.length);
    return this.exact;
  }

  /** Adds or replaces the entry for `key`. Returns the tree. */
  set(key: K, value: V): this {
    this.assertLive();
    const codec = this.keyCodec;
    codec.encode(key);
    this.valueCodec.prepare(value);
    const { space, allocator } = this.memory;
    const depth = space.readU8(this.address + H_DEPTH);
    const leaf = this.seekLeaf(codec.bytes, codec.length, true);
    const work = this.work;
    this.io.load(leaf, work);
    const i = this.lowerBound(work, LEAF, codec.bytes, codec.length);
    const exists = this.exact;
    // The new leaf entry, in this.entry.
    const entry = this.entry;
    putU16(entry, 0, codec.length);
    entry[2] = this.valueCodec.tag;
    const partSize = this.valueCodec.partSize;
    copyBytes(codec.bytes, 0, entry, LEAF_ENTRY_HEADER + partSize, codec.length);
    const entrySize = LEAF_ENTRY_HEADER + partSize + codec.length;
    let oldBlob = 0;
    if (exists) {
      const at = getU16(work, N_HEADER + 2 * i);
      oldBlob = valueBlob(work[at + 2]!, work, at + LEAF_ENTRY_HEADER);
      removeSlot(work, i);
    }
    if (fits(work, entrySize, this.capacity)) {
      this.valueCodec.storeBlob(this.memory);
      this.valueCodec.writePart(entry, LEAF_ENTRY_HEADER);
      insertEntry(work, i, entry, 0, entrySize, this.nodeSize, this.work2);
      this.io.store(leaf, work);
    } else {
      // Allocate every node the split may need before changing anything.
      const spare: number[] = [];
      try {
        let needed = 1;
        let level = depth - 2;
        const worst = BRANCH_ENTRY_HEADER + codec.keyMax;
        while (level >= 0) {
          const view = this.io.view(this.pathNode[level]!);
          if (liveBytes(view) + worst + 2 <= this.capacity) break;
          needed++;
          level--;
        }
        if (level < 0) needed++; // a new root
        for (let n = 0; n < needed; n++) spare.push(allocator.alloc(this.nodeSize));
        this.valueCodec.storeBlob(this.memory);
      } catch (error) {
        for (const address of spare) allocator.free(address);
        throw error;
      }
      this.valueCodec.writePart(entry, LEAF_ENTRY_HEADER);
      this.splitInsert(depth - 1, leaf, i, entrySize, spare);
      for (const address of spare) allocator.free(address);
    }
    if (oldBlob !== 0) allocator.free(oldBlob);
    if (!exists) space.writeF64(this.address + H_SIZE, space.readF64(this.address + H_SIZE) + 1);
    this.changed();
    return this;
  }

  /** Removes the entry for `key`; true when there was one. */
  delete(key: K): boolean {
    this.assertLive();
    const codec = this.keyCodec;
    codec.encode(key);
    const { space, allocator } = this.memory;
    const depth = space.readU8(this.address + H_DEPTH);
    const leaf = this.seekLeaf(codec.bytes, codec.length, true);
    const work = this.work;
    this.io.load(leaf, work);
    const i = this.lowerBound(work, LEAF, codec.bytes, codec.length);
    if (!this.exact) return false;
    const at = getU16(work, N_HEADER + 2 * i);
    const blob = valueBlob(work[at + 2]!, work, at + LEAF_ENTRY_HEADER);
    removeSlot(work, i);
    this.io.store(leaf, work);
    if (blob !== 0) allocator.free(blob);
    space.writeF64(this.address + H_SIZE, space.readF64(this.address + H_SIZE) - 1);
    this.rebalance(depth - 1);
    this.changed();
    return true;
  }

  /** Removes every entry and returns every node but a fresh root (and all blobs) to the allocator. */
  clear(): void {
    this.assertLive();
    const { space, allocator } = this.memory;
    const root = allocator.alloc(this.nodeSize);
    space.write(root, emptyNode(this.nodeSize, LEAF));
    const old = space.readF64(this.address + H_ROOT);
    const depth = space.readU8(this.address + H_DEPTH);
    space.writeF64(this.address + H_ROOT, root);
    space.writeU8(this.address + H_DEPTH, 1);
    space.writeF64(this.address + H_SIZE, 0);
    this.freeSubtree(old, depth - 1);
    this.changed();
  }

  /** Frees the tree: every node, blob and the header. The handle is dead after. */
  destroy(): void {
    this.assertLive();
    const space = this.memory.space;
    this.freeSubtree(space.readF64(this.address + H_ROOT), space.readU8(this.address + H_DEPTH) - 1);
    space.writeU32(this.address + H_MAGIC, 0);
    this.memory.allocator.free(this.address);
    this.destroyed = true;
  }

  /** Entries within the bounds, in key order (or reverse), as a cursor (see the overview). */
  range(options: RangeOptions<K> = {}): IterableIterator<[K, V]> {
    return this.cursor(options, true, (key, value) => [key, value] as [K, V]);
  }

  entries(): IterableIterator<[K, V]> {
    return this.range();
  }

  keys(options: RangeOptions<K> = {}): IterableIterator<K> {
    return this.cursor(options, false, (key) => key);
  }

  values(options: RangeOptions<K> = {}): IterableIterator<V> {
    return this.cursor(options, true, (_key, value) => value);
  }

  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.range();
  }

  /** The entry with the smallest key, or undefined when empty. */
  first(): [K, V] | undefined {
    return this.range({ limit: 1 }).next().value as [K, V] | undefined;
  }

  /** The entry with the largest key, or undefined when empty. */
  last(): [K, V] | undefined {
    return this.range({ reverse: true, limit: 1 }).next().value as [K, V] | undefined;
  }

  /** Verifies the invariants listed in the overview; the heap's check() calls this. */
  check(): CheckResult {
    this.assertLive();
    const problems: string[] = [];
    const report = (message: string): void => {
      if (problems.length < PROBLEMS_MAX) problems.push(message);
    };
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    const root = space.readF64(this.address + H_ROOT);
    const leaves: number[] = [];
    let entries = 0;
    const walk = (node: number, level: number, low: Uint8Array | null, high: Uint8Array | null): void => {
      if (problems.length >= PROBLEMS_MAX) return;
      const b = Buffer.alloc(this.nodeSize);
      this.io.load(node, b);
      const kind = b[N_KIND]!;
      const leaf = level === depth - 1;
      if (kind !== (leaf ? LEAF : BRANCH)) {
        report(
          `node ${node} at level ${level} of ${depth} is kind ${kind}, not a ${leaf ? 'leaf' : 'branch'}`,
        );
        return;
      }
      const count = getU16(b, N_COUNT);
      const data = getU32(b, N_DATA);
      if (N_HEADER + 2 * count > data || data > this.nodeSize) {
        report(`node ${node}: ${count} slots and data from ${data} do not fit in ${this.nodeSize} bytes`);
        return;
      }
      if (leaf && count === 0 && level > 0) report(`leaf ${node} is empty and not the root`);
      let previous: Uint8Array | null = low;
      let previousIsBound = true;
      const keys: Uint8Array[] = [];
      for (let i = 0; i < count; i++) {
        const at = getU16(b, N_HEADER + 2 * i);
        const size = leaf ? leafEntrySize(b, at) : BRANCH_ENTRY_HEADER + getU16(b, at);
        if (at < data || at + size > this.nodeSize) {
          report(`node ${node} entry ${i} (${size} bytes at ${at}) lies outside its data area`);
          return;
        }
        const keyLength = getU16(b, at);
        if (keyLength > this.keyCodec.keyMax) report(`node ${node} entry ${i} has a ${keyLength}-byte key`);
        const keyAt = leaf ? at + size - keyLength : at + BRANCH_ENTRY_HEADER;
        const key = Uint8Array.prototype.slice.call(b, keyAt, keyAt + keyLength) as Uint8Array;
        if (previous !== null) {
          const order = compareBytes(previous, 0, previous.length, key, 0, key.length);
          if (previousIsBound ? order > 0 : order >= 0) {
            report(`node ${node} entry ${i}: key ${hex(key)} is not above ${hex(previous)}`);
          }
        }
        if (high !== null && compareBytes(key, 0, key.length, high, 0, high.length) >= 0) {
          report(`node ${node} entry ${i}: key ${hex(key)} is not below its bound ${hex(high)}`);
        }
        previous = key;
        previousIsBound = false;
        keys.push(key);
        if (leaf) {
          const tag = b[at + 2]!;
          if (tag < TAG_NUMBER || tag > TAG_BLOB) report(`leaf ${node} entry ${i} has value tag ${tag}`);
          if (tag === TAG_BLOB) {
            const length = getU32(b, at + LEAF_ENTRY_HEADER);
            const blob = getF64(b, at + LEAF_ENTRY_HEADER + 4);
            try {
              if (this.memory.allocator.usableSize(blob) < length)
                report(`blob ${blob} is shorter than ${length}`);
            } catch (error) {
              report(`leaf ${node} entry ${i} names blob ${blob}, which is not an object: ${String(error)}`);
            }
          }
        }
      }
      if (leaf) {
        leaves.push(node);
        entries += count;
        return;
      }
      walk(getF64(b, N_LINK), level + 1, low, count > 0 ? keys[0]! : high);
      for (let i = 0; i < count; i++) {
        const at = getU16(b, N_HEADER + 2 * i);
        walk(getF64(b, at + 2), level + 1, keys[i]!, i + 1 < count ? keys[i + 1]! : high);
      }
    };
    walk(root, 0, null, null);
    if (problems.length === 0) {
      for (let k = 0; k < leaves.length; k++) {
        const prev = space.readF64(leaves[k]! + N_LINK);
        const next = space.readF64(leaves[k]! + N_NEXT);
        const expectPrev = k > 0 ? leaves[k - 1]! : 0;
        const expectNext = k + 1 < leaves.length ? leaves[k + 1]! : 0;
        if (prev !== expectPrev) report(`leaf ${leaves[k]} links back to ${prev}, not ${expectPrev}`);
        if (next !== expectNext) report(`leaf ${leaves[k]} links on to ${next}, not ${expectNext}`);
      }
      const size = space.readF64(this.address + H_SIZE);
      if (entries !== size) report(`the tree records size ${size} but holds ${entries} entries`);
    }
    return { ok: problems.length === 0, problems };
  }

  // ---------------------------------------------------------------------------------------------
  // Search

  /**
   * The leaf where `key` is or would be. With `record`, the path is kept in pathNode/pathIndex
   * (pathIndex[level] = the child's position in its parent: -1 for child0, else the separator's).
   */
  private seekLeaf(key: Uint8Array, length: number, record: boolean): number {
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    let node = space.readF64(this.address + H_ROOT);
    if (record) {
      this.pathNode[0] = node;
      this.pathIndex[0] = -1;
    }
    for (let level = 0; level < depth - 1; level++) {
      const view = this.io.view(node);
      let i = this.lowerBound(view, BRANCH, key, length);
      if (!this.exact) i--;
      node = i < 0 ? getF64(view, N_LINK) : getF64(view, getU16(view, N_HEADER + 2 * i) + 2);
      if (record) {
        this.pathNode[level + 1] = node;
        this.pathIndex[level + 1] = i;
      }
    }
    return node;
  }

  /** First slot whose key is >= `key` (count when none); sets `exact`. */
  private lowerBound(b: Uint8Array, kind: number, key: Uint8Array, length: number): number {
    let low = 0;
    let high = getU16(b, N_COUNT);
    this.exact = false;
    while (low < high) {
      const mid = (low + high) >>> 1;
      const at = b[N_HEADER + 2 * mid]! | (b[N_HEADER + 2 * mid + 1]! << 8);
      const keyLength = b[at]! | (b[at + 1]! << 8);
      const keyAt =
        kind === LEAF
          ? at + LEAF_ENTRY_HEADER + valuePartSize(b[at + 2]!, b, at + LEAF_ENTRY_HEADER)
          : at + BRANCH_ENTRY_HEADER;
      const order = compareBytes(b, keyAt, keyLength, key, 0, length);
      if (order < 0) {
        low = mid + 1;
      } else {
        if (order === 0) this.exact = true;
        high = mid;
      }
    }
    return low;
  }

  // ---------------------------------------------------------------------------------------------
  // Insert

  /**
   * Inserts this.entry (entrySize bytes) at slot `index` of `node` (at `level`, loaded in
   * this.work), splitting it and as many ancestors as need it. `spare` holds preallocated nodes.
   */
  private splitInsert(level: number, node: number, index: number, entrySize: number, spare: number[]): void {
    const space = this.memory.space;
    for (;;) {
      const work = this.work;
      if (fits(work, entrySize, this.capacity)) {
        insertEntry(work, index, this.entry, 0, entrySize, this.nodeSize, this.work2);
        this.io.store(node, work);
        return;
      }
      const leaf = work[N_KIND] === LEAF;
      const n = this.gather(work, index, entrySize);
      const right = spare.pop()!;
      const left = this.work;
      const rightBytes = this.work2;
      let separatorAt: number;
      if (leaf) {
        const cut = this.balancedCut(n, 0);
        this.writeNode(rightBytes, LEAF, cut, n);
        const oldNext = getF64(left, N_NEXT);
        putF64(rightBytes, N_LINK, node);
        putF64(rightBytes, N_NEXT, oldNext);
        const prev = getF64(left, N_LINK);
        this.writeNode(left, LEAF, 0, cut);
        putF64(left, N_LINK, prev);
        putF64(left, N_NEXT, right);
        this.io.store(node, left);
        this.io.store(right, rightBytes);
        if (oldNext !== 0) space.writeF64(oldNext + N_LINK, right);
        // The separator: the right half's first key, as a branch entry pointing at `right`.
        const first = this.stageOffset[cut]!;
        const keyLength = getU16(this.stage, first);
        separatorAt = first + this.stageSize[cut]! - keyLength;
        this.buildBranchEntry(this.stage, separatorAt, keyLength, right);
      } else {
        const cut = this.balancedCut(n, 1);
        const up = this.stageOffset[cut]!;
        this.writeNode(rightBytes, BRANCH, cut + 1, n);
        putF64(rightBytes, N_LINK, getF64(this.stage, up + 2));
        const child0 = getF64(left, N_LINK);
        this.writeNode(left, BRANCH, 0, cut);
        putF64(left, N_LINK, child0);
        this.io.store(node, left);
        this.io.store(right, rightBytes);
        this.buildBranchEntry(this.stage, up + BRANCH_ENTRY_HEADER, getU16(this.stage, up), right);
      }
      const separatorSize = BRANCH_ENTRY_HEADER + getU16(this.entry, 0);
      if (level === 0) {
        // The root split: a new root above the two halves.
        const root = spare.pop()!;
        const b = this.work;
        b.set(emptyNode(this.nodeSize, BRANCH));
        putF64(b, N_LINK, node);
        insertEntry(b, 0, this.entry, 0, separatorSize, this.nodeSize, this.work2);
        this.io.store(root, b);
        space.writeF64(this.address + H_ROOT, root);
        space.writeU8(this.address + H_DEPTH, space.readU8(this.address + H_DEPTH) + 1);
        return;
      }
      const position = this.pathIndex[level]!;
      level--;
      node = this.pathNode[level]!;
      this.io.load(node, this.work);
      index = position + 1;
      entrySize = separatorSize;
    }
  }

  /** this.entry := a branch entry for the key at src[keyAt, +keyLength) and `child`. */
  private buildBranchEntry(src: Uint8Array, keyAt: number, keyLength: number, child: number): void {
    const entry = this.entry;
    putU16(entry, 0, keyLength);
    putF64(entry, 2, child);
    copyBytes(src, keyAt, entry, BRANCH_ENTRY_HEADER, keyLength);
  }

  /**
   * Copies node `b`'s entries, with this.entry inserted at `index`, into this.stage (offsets and
   * sizes in stageOffset/stageSize). Returns the number of entries.
   */
  private gather(b: Uint8Array, index: number, entrySize: number): number {
    const leaf = b[N_KIND] === LEAF;
    const count = getU16(b, N_COUNT);
    let used = 0;
    let n = 0;
    const add = (src: Uint8Array, at: number, size: number): void => {
      copyBytes(src, at, this.stage, used, size);
      this.stageOffset[n] = used;
      this.stageSize[n] = size;
      used += size;
      n++;
    };
    for (let i = 0; i <= count; i++) {
      if (i === index) add(this.entry, 0, entrySize);
      if (i === count) break;
      const at = getU16(b, N_HEADER + 2 * i);
      add(b, at, leaf ? leafEntrySize(b, at) : BRANCH_ENTRY_HEADER + getU16(b, at));
    }
    return n;
  }

  /**
   * The cut that best balances bytes (entry plus slot) between [0, cut) and [cut + skip, n),
   * leaving at least one entry on each side of a leaf split.
   */
  private balancedCut(n: number, skip: number): number {
    let total = 0;
    for (let i = 0; i < n; i++) total += this.stageSize[i]! + 2;
    let best = 1;
    let bestCost = Infinity;
    let left = 0;
    const lastCut = n - 1 - skip;
    for (let cut = 1; cut <= lastCut; cut++) {
      left += this.stageSize[cut - 1]! + 2;
      const right = total - left - (skip ? this.stageSize[cut]! + 2 : 0);
      const cost = Math.max(left, right);
      if (cost < bestCost) {
        bestCost = cost;
        best = cut;
      }
    }
    return best;
  }

  /** Writes staged entries [from, to) into `b` as a fresh node of `kind` (links zero). */
  private writeNode(b: Uint8Array, kind: number, from: number, to: number): void {
    b.fill(0);
    b[N_KIND] = kind;
    let data = this.nodeSize;
    for (let i = from; i < to; i++) {
      const size = this.stageSize[i]!;
      data -= size;
      copyBytes(this.stage, this.stageOffset[i]!, b, data, size);
      putU16(b, N_HEADER + 2 * (i - from), data);
    }
    putU16(b, N_COUNT, to - from);
    putU32(b, N_DATA, data);
  }

  // ---------------------------------------------------------------------------------------------
  // Delete

  /** Restores the delete policy (see the overview) from the node at `level` of the recorded path up. */
  private rebalance(level: number): void {
    const { space, allocator } = this.memory;
    for (;;) {
      if (level === 0) {
        this.collapseRoot();
        return;
      }
      const node = this.pathNode[level]!;
      const view = this.io.view(node);
      const kind = view[N_KIND]!;
      const count = getU16(view, N_COUNT);
      const live = liveBytes(view);
      if (!(kind === LEAF && count === 0) && live >= this.capacity / 4) return;
      const parent = this.pathNode[level - 1]!;
      const position = this.pathIndex[level]!;
      const parentView = this.io.view(parent);
      const parentCount = getU16(parentView, N_COUNT);
      if (parentCount === 0) {
        if (kind === LEAF && count === 0) {
          this.cutEmptyChain(level);
          return;
        }
        level--;
        continue;
      }
      // Merge with the right sibling, or with the left one when this is the last child.
      let leftNode: number;
      let rightNode: number;
      let separator: number;
      if (position + 1 < parentCount) {
        separator = position + 1;
        leftNode = node;
        rightNode = getF64(parentView, getU16(parentView, N_HEADER + 2 * separator) + 2);
      } else {
        separator = position;
        rightNode = node;
        leftNode =
          position === 0
            ? getF64(parentView, N_LINK)
            : getF64(parentView, getU16(parentView, N_HEADER + 2 * (position - 1)) + 2);
      }
      const separatorAt = getU16(parentView, N_HEADER + 2 * separator);
      const separatorKeyLength = getU16(parentView, separatorAt);
      // this.entry := the separator (a branch merge pulls it down, pointing at right's child0).
      copyBytes(parentView, separatorAt, this.entry, 0, BRANCH_ENTRY_HEADER + separatorKeyLength);
      const left = this.work;
      const right = this.work2;
      this.io.load(leftNode, left);
      this.io.load(rightNode, right);
      let merged = liveBytes(left) + liveBytes(right);
      if (kind === BRANCH) merged += BRANCH_ENTRY_HEADER + separatorKeyLength + 2;
      if (merged > this.capacity) return;
      // Stage left's entries, (the separator,) then right's, and rewrite left with all of them.
      let n = 0;
      let used = 0;
      const add = (src: Uint8Array, at: number, size: number): void => {
        copyBytes(src, at, this.stage, used, size);
        this.stageOffset[n] = used;
        this.stageSize[n] = size;
        used += size;
        n++;
      };
      const addAll = (b: Uint8Array): void => {
        const c = getU16(b, N_COUNT);
        for (let i = 0; i < c; i++) {
          const at = getU16(b, N_HEADER + 2 * i);
          add(b, at, kind === LEAF ? leafEntrySize(b, at) : BRANCH_ENTRY_HEADER + getU16(b, at));
        }
      };
      addAll(left);
      if (kind === BRANCH) {
        putF64(this.entry, 2, getF64(right, N_LINK));
        add(this.entry, 0, BRANCH_ENTRY_HEADER + separatorKeyLength);
      }
      addAll(right);
      const link = getF64(left, N_LINK);
      const next = getF64(right, N_NEXT);
      this.writeNode(left, kind, 0, n);
      putF64(left, N_LINK, link);
      if (kind === LEAF) {
        putF64(left, N_NEXT, next);
        if (next !== 0) space.writeF64(next + N_LINK, leftNode);
      }
      this.io.store(leftNode, left);
      // The right node is gone: blobs moved with their entries, so only the node is freed.
      allocator.free(rightNode);
      this.io.load(parent, this.work);
      removeSlot(this.work, separator);
      this.io.store(parent, this.work);
      level--;
    }
  }

  /**
   * The empty leaf at `level` is its parent's only child: cut the chain of single-child nodes
   * above it out of the nearest ancestor that has other children (or, when there is none, make
   * the leaf the root).
   */
  private cutEmptyChain(level: number): void {
    const { space, allocator } = this.memory;
    let top = level - 1; // the highest single-child ancestor so far
    while (top > 0 && space.readU16(this.pathNode[top - 1]! + N_COUNT) === 0) top--;
    const leaf = this.pathNode[level]!;
    if (top === 0) {
      // Every ancestor has one child: the tree is this one leaf.
      for (let l = 0; l < level; l++) allocator.free(this.pathNode[l]!);
      space.writeF64(this.address + H_ROOT, leaf);
      space.writeU8(this.address + H_DEPTH, 1);
      return;
    }
    // Unlink the leaf from its neighbours, then drop the chain from path[top], free it all.
    const prev = space.readF64(leaf + N_LINK);
    const next = space.readF64(leaf + N_NEXT);
    if (prev !== 0) space.writeF64(prev + N_NEXT, next);
    if (next !== 0) space.writeF64(next + N_LINK, prev);
    for (let l = top; l <= level; l++) allocator.free(this.pathNode[l]!);
    const ancestor = this.pathNode[top - 1]!;
    const position = this.pathIndex[top]!;
    const work = this.work;
    this.io.load(ancestor, work);
    if (position < 0) {
      // child0 goes: the first separator's child becomes child0 and the separator is dropped.
      putF64(work, N_LINK, getF64(work, getU16(work, N_HEADER) + 2));
      removeSlot(work, 0);
    } else {
      removeSlot(work, position);
    }
    this.io.store(ancestor, work);
    this.rebalance(top - 1);
  }

  /** While the root is a branch with one child, that child becomes the root. */
  private collapseRoot(): void {
    const { space, allocator } = this.memory;
    for (;;) {
      const root = space.readF64(this.address + H_ROOT);
      if (space.readU8(root + N_KIND) !== BRANCH || space.readU16(root + N_COUNT) !== 0) return;
      space.writeF64(this.address + H_ROOT, space.readF64(root + N_LINK));
      space.writeU8(this.address + H_DEPTH, space.readU8(this.address + H_DEPTH) - 1);
      allocator.free(root);
    }
  }

  /** Frees a subtree (nodes and blobs); `levels` = levels below it. */
  private freeSubtree(node: number, levels: number): void {
    const allocator = this.memory.allocator;
    const b = Buffer.alloc(this.nodeSize);
    this.io.load(node, b);
    const count = getU16(b, N_COUNT);
    if (levels === 0) {
      for (let i = 0; i < count; i++) {
        const at = getU16(b, N_HEADER + 2 * i);
        const blob = valueBlob(b[at + 2]!, b, at + LEAF_ENTRY_HEADER);
        if (blob !== 0) allocator.free(blob);
      }
    } else {
      this.freeSubtree(getF64(b, N_LINK), levels - 1);
      for (let i = 0; i < count; i++)
        this.freeSubtree(getF64(b, getU16(b, N_HEADER + 2 * i) + 2), levels - 1);
    }
    allocator.free(node);
  }

  // ---------------------------------------------------------------------------------------------
  // Cursors

  private cursor<T>(
    options: RangeOptions<K>,
    withValues: boolean,
    make: (key: K, value: V) => T,
  ): IterableIterator<T> {
    this.assertLive();
    const encodeBound = (key: K | undefined): Uint8Array | null => {
      if (key === undefined) return null;
      this.keyCodec.encode(key);
      return Uint8Array.prototype.slice.call(this.keyCodec.bytes, 0, this.keyCodec.length) as Uint8Array;
    };
    const reverse = options.reverse === true;
    const limit = options.limit ?? Infinity;
    if (!(limit >= 0)) throw invalidArgument(`limit ${String(options.limit)} must be a number >= 0`);
    const gt = encodeBound(options.gt);
    const gte = encodeBound(options.gte);
    const lt = encodeBound(options.lt);
    const lte = encodeBound(options.lte);
    if ((gt && gte) || (lt && lte)) throw invalidArgument('give at most one of gt/gte and one of lt/lte');
    return this.walk(reverse, limit, gt ?? gte, gt !== null, lt ?? lte, lt !== null, withValues, make);
  }

  private *walk<T>(
    reverse: boolean,
    limit: number,
    low: Uint8Array | null,
    lowExclusive: boolean,
    high: Uint8Array | null,
    highExclusive: boolean,
    withValues: boolean,
    make: (key: K, value: V) => T,
  ): Generator<T> {
    const space = this.memory.space;
    let last = new Uint8Array(64);
    let lastLength = -1; // none yet
    let changes = -1;
    let leaf = 0;
    let index = 0;
    for (let yielded = 0; yielded < limit; yielded++) {
      this.assertLive();
      const now = space.readF64(this.address + H_CHANGES);
      if (now !== changes) {
        // (Re)position: start at a bound, or just past the last key returned.
        changes = now;
        const from = lastLength >= 0 ? last : reverse ? high : low;
        const fromLength = lastLength >= 0 ? lastLength : (from?.length ?? 0);
        const exclusive = lastLength >= 0 || (reverse ? highExclusive : lowExclusive);
        if (from === null) {
          leaf = this.edgeLeaf(reverse);
          index = reverse ? space.readU16(leaf + N_COUNT) - 1 : 0;
        } else {
          leaf = this.seekLeaf(from, fromLength, false);
          const view = this.io.view(leaf);
          index = this.lowerBound(view, LEAF, from, fromLength);
          if (reverse) index--;
          else if (this.exact && exclusive) index++;
          if (reverse && this.exact && !exclusive) index++;
        }
      }
      // Step over leaf ends.
      while (leaf !== 0 && (index < 0 || index >= space.readU16(leaf + N_COUNT))) {
        if (reverse) {
          leaf = space.readF64(leaf + N_LINK);
          if (leaf !== 0) index = space.readU16(leaf + N_COUNT) - 1;
        } else {
          leaf = space.readF64(leaf + N_NEXT);
          index = 0;
        }
      }
      if (leaf === 0) return;
      const view = this.io.view(leaf);
      const at = getU16(view, N_HEADER + 2 * index);
      const keyLength = getU16(view, at);
      const keyAt = at + leafEntrySize(view, at) - keyLength;
      const stop = reverse ? low : high;
      if (stop !== null) {
        const order = compareBytes(view, keyAt, keyLength, stop, 0, stop.length);
        const exclusive = reverse ? lowExclusive : highExclusive;
        if (reverse ? order < 0 || (exclusive && order === 0) : order > 0 || (exclusive && order === 0))
          return;
      }
      const key = this.keyCodec.decode(view, keyAt, keyLength);
      if (last.length < keyLength) last = new Uint8Array(keyLength);
      copyBytes(view, keyAt, last, 0, keyLength);
      lastLength = keyLength;
      const value = withValues
        ? this.valueCodec.read(this.memory, view[at + 2]!, view, at + LEAF_ENTRY_HEADER)
        : undefined;
      index += reverse ? -1 : 1;
      yield make(key, value as V);
    }
  }

  /** The leftmost (or rightmost) leaf. */
  private edgeLeaf(reverse: boolean): number {
    const space = this.memory.space;
    const depth = space.readU8(this.address + H_DEPTH);
    let node = space.readF64(this.address + H_ROOT);
    for (let level = 0; level < depth - 1; level++) {
      const count = space.readU16(node + N_COUNT);
      if (!reverse || count === 0) node = space.readF64(node + N_LINK);
      else node = space.readF64(node + space.readU16(node + N_HEADER + 2 * (count - 1)) + 2);
    }
    return node;
  }

  private changed(): void {
    const space = this.memory.space;
    space.writeF64(this.address + H_CHANGES, space.readF64(this.address + H_CHANGES) + 1);
  }

  private assertLive(): void {
    if (this.destroyed)
      throw new MemfabricError(ErrorCodes.DESTROYED, 'this B+tree was destroyed; create a new one');
  }
}

function emptyNode(nodeSize: number, kind: number): Uint8Array {
  const b = new Uint8Array(nodeSize);
  b[N_KIND] = kind;
  putU32(b, N_DATA, nodeSize);
  return b;
}

function leafEntrySize(b: Uint8Array, at: number): number {
  return LEAF_ENTRY_HEADER + valuePartSize(b[at + 2]!, b, at + LEAF_ENTRY_HEADER) + getU16(b, at);
}

/** Bytes of entries and slots in a node (what it would hold once compacted). */
function liveBytes(b: Uint8Array): number {
  const count = getU16(b, N_COUNT);
  const leaf = b[N_KIND] === LEAF;
  let total = 2 * count;
  for (let i = 0; i < count; i++) {
    const at = getU16(b, N_HEADER + 2 * i);
    total += leaf ? leafEntrySize(b, at) : BRANCH_ENTRY_HEADER + getU16(b, at);
  }
  return total;
}

/** True when an entry of `size` bytes (plus its slot) fits, compacting the node if need be. */
function fits(b: Uint8Array, size: number, capacity: number): boolean {
  // The free gap between slots and data is enough most of the time; only then count live bytes.
  if (getU32(b, N_DATA) - (N_HEADER + 2 * getU16(b, N_COUNT)) >= size + 2) return true;
  return liveBytes(b) + size + 2 <= capacity;
}

function removeSlot(b: Uint8Array, i: number): void {
  const count = getU16(b, N_COUNT);
  b.copyWithin(N_HEADER + 2 * i, N_HEADER + 2 * (i + 1), N_HEADER + 2 * count);
  putU16(b, N_COUNT, count - 1);
}

/**
 * Inserts src[from, from + size) as slot `i` of node `b`, which must have room once compacted
 * (fits()); compacts it first through `scratch` when the free gap is too small.
 */
function insertEntry(
  b: Uint8Array,
  i: number,
  src: Uint8Array,
  from: number,
  size: number,
  nodeSize: number,
  scratch: Uint8Array,
): void {
  let count = getU16(b, N_COUNT);
  let data = getU32(b, N_DATA);
  if (data - (N_HEADER + 2 * count) < size + 2) {
    // Compact: repack the entries at the end, in slot order.
    const leaf = b[N_KIND] === LEAF;
    scratch.set(b);
    data = nodeSize;
    for (let s = 0; s < count; s++) {
      const at = getU16(scratch, N_HEADER + 2 * s);
      const length = leaf ? leafEntrySize(scratch, at) : BRANCH_ENTRY_HEADER + getU16(scratch, at);
      data -= length;
      copyBytes(scratch, at, b, data, length);
      putU16(b, N_HEADER + 2 * s, data);
    }
    b.fill(0, N_HEADER + 2 * count, data);
  }
  data -= size;
  copyBytes(src, from, b, data, size);
  b.copyWithin(N_HEADER + 2 * (i + 1), N_HEADER + 2 * i, N_HEADER + 2 * count);
  putU16(b, N_HEADER + 2 * i, data);
  count++;
  putU16(b, N_COUNT, count);
  putU32(b, N_DATA, data);
}

function hex(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.length).toString('hex') || '(empty)';
}

function typeError(message: string): MemfabricError {
  return new MemfabricError(ErrorCodes.HEAP_TYPE, message);
}
