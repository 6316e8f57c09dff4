/**
 * Test double: a file layer that loses power. Writes are held in memory (reads see them) and
 * reach the file only at datasync, as on a disk with a volatile cache. At the flush numbered
 * `crashAtSync` (1-based, counted per open file) the "power fails": a random subset of the
 * pending writes lands, one of them torn (only its first sectors), and the process is killed
 * with SIGKILL before the flush returns. So the file is left exactly as a power loss could
 * leave it: every write before the last completed flush, any subset of the later ones, torn.
 *
 * It lives in src/ because the heap's image store runs in the pager's worker thread, which is
 * built from plain data: the crash tests name this layer in the store spec (like the 'test'
 * store). Never use it outside tests.
 */
import { writeSync, fdatasyncSync, openSync, closeSync } from 'node:fs';
import type { FileLayer, FileLayerHandle } from './file-layer.js';

export interface PowerLossOptions {
  /** The flush at which the power fails (1 = the first). */
  crashAtSync: number;
  /** Seed for which pending writes land and where the torn one is cut. */
  seed: number;
}

const SECTOR = 512;

export function powerLossLayer(inner: FileLayer, options: PowerLossOptions): FileLayer {
  return {
    async open(path, flags) {
      const handle = await inner.open(path, flags);
      return wrap(handle, path, options);
    },
    ...(inner.unlink ? { unlink: inner.unlink } : {}),
  };
}

function wrap(handle: FileLayerHandle, path: string, options: PowerLossOptions): FileLayerHandle {
  const pending: { position: number; bytes: Uint8Array }[] = [];
  let syncs = 0;
  let state = options.seed >>> 0 || 1;
  const random = (): number => {
    // xorshift32: deterministic per seed, so a failing case can be replayed.
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
  const overlay = (buffer: Uint8Array, offset: number, length: number, position: number): void => {
    for (const write of pending) {
      const from = Math.max(position, write.position);
      const to = Math.min(position + length, write.position + write.bytes.length);
      if (from < to)
        buffer.set(
          write.bytes.subarray(from - write.position, to - write.position),
          offset + from - position,
        );
    }
  };
  const apply = (fd: number, write: { position: number; bytes: Uint8Array }, length: number): void => {
    let done = 0;
    while (done < length) done += writeSync(fd, write.bytes, done, length - done, write.position + done);
  };
  return {
    async read(buffer, offset, length, position) {
      const result = await handle.read(buffer, offset, length, position);
      // Pending writes past the end of the file extend what can be read.
      let bytesRead = result.bytesRead;
      for (const write of pending) {
        const end = Math.min(position + length, write.position + write.bytes.length);
        if (write.position < position + length && end - position > bytesRead) {
          buffer.fill(0, offset + bytesRead, offset + (end - position));
          bytesRead = end - position;
        }
      }
      overlay(buffer, offset, bytesRead, position);
      return { bytesRead };
    },
    readSync: undefined,
    async write(buffer, offset, length, position) {
      pending.push({ position, bytes: buffer.slice(offset, offset + length) });
      return { bytesWritten: length };
    },
    async truncate(length) {
      await handle.truncate(length);
    },
    async datasync() {
      syncs++;
      const fd = openSync(path, 'r+');
      try {
        if (syncs === options.crashAtSync) {
          const torn = Math.floor(random() * pending.length);
          for (let i = 0; i < pending.length; i++) {
            const write = pending[i]!;
            if (i === torn) {
              const sectors = Math.max(1, Math.floor(write.bytes.length / SECTOR));
              apply(fd, write, Math.min(write.bytes.length, Math.floor(random() * sectors) * SECTOR));
            } else if (random() < 0.5) {
              apply(fd, write, write.bytes.length);
            }
          }
          fdatasyncSync(fd);
          process.kill(process.pid, 'SIGKILL');
        }
        for (const write of pending) apply(fd, write, write.bytes.length);
        fdatasyncSync(fd);
        pending.length = 0;
      } finally {
        closeSync(fd);
      }
    },
    async close() {
      await handle.close();
    },
  };
}
