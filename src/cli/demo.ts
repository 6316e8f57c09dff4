/**
 * `memfabric demo`: the memory core in thirty lines of output. Forks a space into clones,
 * writes to them, runs the same-page merger and prints what it saved.
 */
import { AddressSpace, FramePool, SamePageMerger, formatSize } from '../index.js';

export interface DemoOptions {
  clones: number;
  sizeBytes: number;
  out: (line: string) => void;
}

export function runDemo({ clones, sizeBytes, out }: DemoOptions): void {
  const pool = new FramePool({ capacity: sizeBytes * (clones + 2) });
  const merger = new SamePageMerger(pool);
  const parent = new AddressSpace(pool, { size: sizeBytes });
  merger.register(parent);
  const pages = sizeBytes / pool.pageSize;
  const page = Buffer.alloc(pool.pageSize);
  for (let p = 0; p < pages; p++) {
    page.fill(p & 0xff);
    page.writeUInt32LE(p, 0);
    parent.write(p * pool.pageSize, page);
  }
  out(`parent: ${formatSize(sizeBytes)} written, ${pool.used} frames in use`);
  const children = Array.from({ length: clones }, () => parent.fork());
  out(`forked ${clones} copy-on-write clones: still ${pool.used} frames (fork copies no page)`);
  // Every clone rewrites the first quarter of its pages with the same new contents
  // (say, the same upgrade applied to every tenant), so the copies are identical.
  for (const child of children) {
    for (let p = 0; p < pages / 4; p++) {
      page.fill(0xee);
      page.writeUInt32LE(p, 0);
      child.write(p * pool.pageSize, page);
    }
  }
  const before = pool.used;
  out(`each clone rewrote a quarter of its pages: ${before} frames (${formatSize(before * pool.pageSize)})`);
  for (let pass = 1; pass <= 2; pass++) {
    merger.scan();
    out(`merge pass ${pass}: ${pool.used} frames`);
  }
  const stats = merger.stats();
  out(
    `merged: ${stats.pagesShared} shared pages, ${stats.pagesSharing} more pages point at them; ` +
      `saved ${formatSize(stats.bytesSavedNet)} net of ${formatSize(stats.metadataBytes)} of merger tables`,
  );
  children[0]!.writeU8(0, 1);
  out(
    `a write to clone 0 copies one page for it alone: ${pool.used} frames, ${stats.cowBreaks + 1} COW break`,
  );
  out(`clone 0 reads ${children[0]!.readU8(0)}, clone 1 reads ${children[1]!.readU8(0)} at address 0`);
  for (const child of children) child.destroy();
  parent.destroy();
  merger.destroy();
  out(`destroyed everything: ${pool.used} frames in use`);
}
