/**
 * File layers for file-backing tests (src/appliance/file-layer.ts):
 *
 *   - `hookedLayer(hooks)`: the real file system, with a hook before each operation that may
 *     throw (inject EFBIG, EIO…) or wait (hold a load in `loading`);
 *   - `PowerLossLayer`: an in-memory file system that keeps, per file, the durable bytes apart
 *     from writes not yet synced, and directory entries apart from those not yet made durable
 *     by a directory fsync. `powerLoss(random)` keeps a random subset of the unsynced writes
 *     (in order), tears one of them (one page half old, half new), forgets unsynced directory
 *     changes, and makes every handle opened before it fail, like a machine that lost power.
 */
import { basename, dirname } from 'node:path';
import { nodeFileLayer, type FileLayer, type LayerFile } from '../../src/appliance/file-layer.js';

export type Op = 'open' | 'read' | 'write' | 'truncate' | 'datasync' | 'sync' | 'rename' | 'readFile';

/** Called before each operation on `path`; may throw or wait. */
export type Hook = (op: Op, path: string, detail?: { flags?: string; size?: number }) => void | Promise<void>;

export function hookedLayer(hook: Hook): FileLayer {
  const wrap = (path: string, file: LayerFile): LayerFile => ({
    read: async (b, o, l, p) => {
      await hook('read', path);
      return file.read(b, o, l, p);
    },
    write: async (b, o, l, p) => {
      await hook('write', path);
      return file.write(b, o, l, p);
    },
    truncate: async (size) => {
      await hook('truncate', path, { size });
      return file.truncate(size);
    },
    datasync: async () => {
      await hook('datasync', path);
      return file.datasync();
    },
    sync: async () => {
      await hook('sync', path);
      return file.sync();
    },
    close: () => file.close(),
  });
  return {
    ...nodeFileLayer,
    async open(path, flags) {
      await hook('open', path, { flags });
      return wrap(path, await nodeFileLayer.open(path, flags));
    },
    async readFile(path) {
      await hook('readFile', path);
      return nodeFileLayer.readFile(path);
    },
    async rename(from, to) {
      await hook('rename', to);
      return nodeFileLayer.rename(from, to);
    },
  };
}

export function errno(code: string, message = code): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

// ---- simulated power loss ------------------------------------------------------------------

type Pending = { kind: 'write'; position: number; bytes: Buffer } | { kind: 'truncate'; size: number };

class Inode {
  data: Buffer = Buffer.alloc(0);
  durable: Buffer = Buffer.alloc(0);
  pending: Pending[] = [];

  apply(op: Pending, into: Buffer): Buffer {
    if (op.kind === 'truncate') {
      const out = Buffer.alloc(op.size);
      into.copy(out, 0, 0, Math.min(into.length, op.size));
      return out;
    }
    let out = into;
    const end = op.position + op.bytes.length;
    if (end > out.length) {
      out = Buffer.alloc(end);
      into.copy(out);
    }
    op.bytes.copy(out, op.position);
    return out;
  }
}

export class PowerLossLayer implements FileLayer {
  /** Unsynced writes dropped and torn at the last power loss (for test messages). */
  lastLoss = { kept: 0, dropped: 0, torn: false };
  private names = new Map<string, Inode>();
  private durableNames = new Map<string, Inode>();
  private generation = 0;

  constructor(private readonly pageSize = 4096) {}

  /** The durable bytes of `path` (what survives a power loss now), or undefined. */
  durableBytes(path: string): Buffer | undefined {
    return this.durableNames.get(path)?.durable;
  }

  powerLoss(random: () => number): void {
    const writes: Array<{ inode: Inode; index: number }> = [];
    for (const inode of new Set(this.names.values())) {
      inode.pending.forEach((op, index) => {
        if (op.kind === 'write') writes.push({ inode, index });
      });
    }
    const torn = writes.length > 0 ? writes[Math.floor(random() * writes.length)]! : undefined;
    let kept = 0;
    let dropped = 0;
    for (const inode of new Set([...this.names.values(), ...this.durableNames.values()])) {
      let result: Buffer = inode.durable;
      inode.pending.forEach((op, index) => {
        if (torn && torn.inode === inode && torn.index === index && op.kind === 'write') {
          // One page of this write reaches the disk half: new first half, old second half.
          const pages = Math.max(1, Math.ceil(op.bytes.length / this.pageSize));
          const page = Math.floor(random() * pages);
          const cut = Math.min(op.bytes.length, page * this.pageSize + this.pageSize / 2);
          result = inode.apply(
            { kind: 'write', position: op.position, bytes: op.bytes.subarray(0, cut) },
            result,
          );
          return;
        }
        if (random() < 0.5) {
          result = inode.apply(op, result);
          kept++;
        } else {
          dropped++;
        }
      });
      inode.durable = Buffer.from(result);
      inode.data = Buffer.from(result);
      inode.pending = [];
    }
    this.names = new Map(this.durableNames);
    this.generation++;
    this.lastLoss = { kept, dropped, torn: torn !== undefined };
  }

  /**
   * This file system as one boot of the machine sees it: after the next power loss every call
   * through it fails with EIO, so an appliance that "died" cannot touch the disk again.
   */
  boot(): FileLayer {
    const generation = this.generation;
    const live = (): void => {
      if (this.generation !== generation) throw errno('EIO', 'the machine lost power');
    };
    // Each operation checks after its own yield, right before it changes anything.
    return {
      open: (path, flags) => this.open(path, flags, live),
      readFile: (path) => this.readFile(path, live),
      size: (path) => this.size(path, live),
      rename: (from, to) => this.rename(from, to, live),
      remove: (path) => this.remove(path, live),
      readdir: (dir) => this.readdir(dir, live),
      syncDir: (dir) => this.syncDir(dir, live),
    };
  }

  async open(path: string, flags: 'r' | 'r+' | 'wx+' | 'w', guard = noGuard): Promise<LayerFile> {
    await tick();
    guard();
    let inode = this.names.get(path);
    if (flags === 'wx+' && inode) throw errno('EEXIST', path);
    if ((flags === 'r' || flags === 'r+') && !inode) throw errno('ENOENT', path);
    if (!inode) {
      inode = new Inode();
      this.names.set(path, inode);
    } else if (flags === 'w') {
      this.mutate(inode, { kind: 'truncate', size: 0 });
    }
    const generation = this.generation;
    const node = inode;
    const live = (): void => {
      if (this.generation !== generation) throw errno('EIO', `${path}: the machine lost power`);
    };
    return {
      read: async (buffer, offset, length, position) => {
        await tick();
        live();
        const n = Math.max(0, Math.min(length, node.data.length - position));
        node.data.copy(buffer, offset, position, position + n);
        return n;
      },
      write: async (buffer, offset, length, position) => {
        await tick();
        live();
        this.mutate(node, {
          kind: 'write',
          position,
          bytes: Buffer.from(buffer.subarray(offset, offset + length)),
        });
      },
      truncate: async (size) => {
        await tick();
        live();
        this.mutate(node, { kind: 'truncate', size });
      },
      datasync: async () => {
        await tick();
        live();
        node.durable = Buffer.from(node.data);
        node.pending = [];
      },
      sync: async () => {
        await tick();
        live();
        node.durable = Buffer.from(node.data);
        node.pending = [];
      },
      close: async () => undefined,
    };
  }

  async readFile(path: string, guard = noGuard): Promise<Buffer> {
    await tick();
    guard();
    const inode = this.names.get(path);
    if (!inode) throw errno('ENOENT', path);
    return Buffer.from(inode.data);
  }

  async size(path: string, guard = noGuard): Promise<number | undefined> {
    guard();
    return this.names.get(path)?.data.length;
  }

  async rename(from: string, to: string, guard = noGuard): Promise<void> {
    await tick();
    guard();
    const inode = this.names.get(from);
    if (!inode) throw errno('ENOENT', from);
    this.names.set(to, inode);
    this.names.delete(from);
  }

  async remove(path: string, guard = noGuard): Promise<void> {
    guard();
    this.names.delete(path);
  }

  async readdir(dir: string, guard = noGuard): Promise<string[]> {
    guard();
    return [...this.names.keys()].filter((path) => dirname(path) === dir).map((path) => basename(path));
  }

  async syncDir(dir: string, guard = noGuard): Promise<void> {
    await tick();
    guard();
    for (const path of [...this.durableNames.keys()]) {
      if (dirname(path) === dir && !this.names.has(path)) this.durableNames.delete(path);
    }
    for (const [path, inode] of this.names) if (dirname(path) === dir) this.durableNames.set(path, inode);
  }

  private mutate(inode: Inode, op: Pending): void {
    inode.data = inode.apply(op, inode.data);
    inode.pending.push(op);
  }
}

function noGuard(): void {}

/** Lets other work run between file operations, so saves interleave with writes. */
function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// ---- a sparse in-memory file system (for sizes no test machine's disk allows) ---------------

const SPARSE_CHUNK = 64 * 1024;

class SparseFile {
  size = 0;
  readonly chunks = new Map<number, Buffer>();

  read(buffer: Uint8Array, offset: number, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.size - position));
    for (let done = 0; done < n;) {
      const at = position + done;
      const index = Math.floor(at / SPARSE_CHUNK);
      const inChunk = at - index * SPARSE_CHUNK;
      const step = Math.min(n - done, SPARSE_CHUNK - inChunk);
      const chunk = this.chunks.get(index);
      if (chunk) chunk.copy(buffer, offset + done, inChunk, inChunk + step);
      else buffer.fill(0, offset + done, offset + done + step);
      done += step;
    }
    return n;
  }

  write(buffer: Uint8Array, offset: number, length: number, position: number): void {
    for (let done = 0; done < length;) {
      const at = position + done;
      const index = Math.floor(at / SPARSE_CHUNK);
      const inChunk = at - index * SPARSE_CHUNK;
      const step = Math.min(length - done, SPARSE_CHUNK - inChunk);
      let chunk = this.chunks.get(index);
      if (!chunk) this.chunks.set(index, (chunk = Buffer.alloc(SPARSE_CHUNK)));
      chunk.set(buffer.subarray(offset + done, offset + done + step), inChunk);
      done += step;
    }
    this.size = Math.max(this.size, position + length);
  }

  truncate(size: number): void {
    for (const index of [...this.chunks.keys()]) if (index * SPARSE_CHUNK >= size) this.chunks.delete(index);
    this.size = size;
  }
}

/** Files of any size up to 2^53 bytes, holding only the chunks written (no durability model). */
export class SparseLayer implements FileLayer {
  private readonly files = new Map<string, SparseFile>();

  async open(path: string, flags: 'r' | 'r+' | 'wx+' | 'w'): Promise<LayerFile> {
    let file = this.files.get(path);
    if (flags === 'wx+' && file) throw errno('EEXIST', path);
    if ((flags === 'r' || flags === 'r+') && !file) throw errno('ENOENT', path);
    if (!file || flags === 'w') this.files.set(path, (file = new SparseFile()));
    const f = file;
    return {
      read: async (b, o, l, p) => f.read(b, o, l, p),
      write: async (b, o, l, p) => f.write(b, o, l, p),
      truncate: async (size) => f.truncate(size),
      datasync: async () => undefined,
      sync: async () => undefined,
      close: async () => undefined,
    };
  }

  async readFile(path: string): Promise<Buffer> {
    const file = this.files.get(path);
    if (!file) throw errno('ENOENT', path);
    const out = Buffer.alloc(file.size);
    file.read(out, 0, file.size, 0);
    return out;
  }

  async size(path: string): Promise<number | undefined> {
    return this.files.get(path)?.size;
  }

  async rename(from: string, to: string): Promise<void> {
    const file = this.files.get(from);
    if (!file) throw errno('ENOENT', from);
    this.files.set(to, file);
    this.files.delete(from);
  }

  async remove(path: string): Promise<void> {
    this.files.delete(path);
  }

  async readdir(dir: string): Promise<string[]> {
    return [...this.files.keys()].filter((path) => dirname(path) === dir).map((path) => basename(path));
  }

  async syncDir(): Promise<void> {}
}
