// Module groups for the mutation run (stryker.config.mjs, scripts/mutation.mjs). Each group mutates
// the code where a silent bug costs data and runs only the test files (and, by name, the tests)
// that exercise it. Groups are narrow on purpose: every mutant runs its group's whole command
// (the command runner has no per-test coverage), so a module's mutants should not pay for
// another module's tests.
import { readFileSync } from 'node:fs';

/**
 * Stryker's `file:first-last` for the code from the declaration of `from` up to the line before
 * the declaration of `to` (or the file's end), found by name so the ranges follow the code as
 * it moves. A declaration is a function, class or class member at the top or one indent level.
 */
function span(file, from, to) {
  const lines = readFileSync(new URL(`../${file}`, import.meta.url), 'utf8').split('\n');
  const line = (name) => {
    const declaration = new RegExp(
      `^(?:  )?(?:export )?(?:async )?(?:function |class )?(?:(?:private|static|async|get) )*${name}[(<\\s]`,
    );
    const index = lines.findIndex((text) => declaration.test(text));
    if (index < 0) throw new Error(`mutation groups: no declaration of ${name} in ${file}`);
    return index + 1;
  };
  const first = line(from);
  const last = to === undefined ? lines.length : line(to) - 1;
  return `${file}:${first}-${last}`;
}

export const groups = {
  memory: {
    // Translation, faults, copy-on-write, leaf ownership and the frames a write reserves; the
    // pool's frame references. Not `FramePool.retain`: nothing in src calls it.
    mutate: [
      span('src/memory/address-space.ts', 'translateForRead', 'zeroRange'),
      span('src/memory/frame-pool.ts', 'allocate', 'retain'),
      span('src/memory/frame-pool.ts', 'release', 'attachPaging'),
    ],
    // Swapped entries come from test/memory/paging.test.ts's in-process paging backend, which
    // reaches the fault and slot-reference paths the pager's tests reach, without a store worker
    // per test (a quarter of a second each).
    tests: [
      'test/memory/address-space.test.ts',
      'test/memory/frame-pool.test.ts',
      'test/memory/model.test.ts',
      'test/memory/paging.test.ts',
      'test/memory/merger.test.ts',
    ],
  },
  merger: {
    mutate: [span('src/memory/merger.ts', 'scanLeaf', 'quietLongEnough')],
    // The model test merges between random writes, forks and destroys.
    tests: ['test/memory/merger.test.ts', 'test/memory/model.test.ts'],
  },
  nbd: {
    mutate: [
      span('src/nbd/server/validate.ts', 'validateRequest', 'commandName'),
      span('src/nbd/server/request-parser.ts', 'feed', 'plan'),
      // The request parser decodes each header with the protocol's decoder.
      span('src/nbd/protocol/request.ts', 'decodeRequestHeader'),
    ],
    tests: [
      'test/nbd/validate.test.ts',
      'test/nbd/request-parser.test.ts',
      'test/nbd/request-parser-wait.test.ts',
      'test/nbd/transmission.test.ts',
    ],
    // Every unit test of the two modules, and of the socket tests those that parse and validate
    // requests: the server-lifecycle ones (close grace, flush failure, many connections) reach
    // the parser no differently and cost seconds per mutant.
    only: [
      // validate.test.ts
      'the range check',
      'payload size',
      'flags:',
      'FLUSH carries',
      'read-only exports',
      'BLOCK_STATUS needs',
      'a request wrong',
      'rejectionErrno',
      // request-parser.test.ts
      'a zero-length payload',
      'a payload that exactly',
      'pause holds',
      'a pause from the sink',
      'bytes fed from inside',
      'a parser stopped',
      'a bad magic',
      'random requests',
      // request-parser-wait.test.ts
      'RequestParser: WAIT',
      // transmission.test.ts
      'simple replies',
      'structured READ',
      'validation:',
      'read-only export',
      'FLUSH and FUA',
      'TRIM and WRITE_ZEROES',
      'an exception in the export',
      'WRITE above the maximum payload',
      'bad request magic',
      'requests fed one byte',
      'RequestParser',
      'pipelined requests',
      'a client that does not read',
      'DISC',
    ],
  },
  codec: {
    mutate: [span('src/fabric/codec.ts', 'reset')],
    tests: ['test/fabric/codec.test.ts'],
  },
  fabric: {
    mutate: [span('src/fabric/external-region.ts', 'writeBatch', 'loadStripes')],
    tests: ['test/fabric/fabric.test.ts', 'test/fabric/coded-write-io.test.ts'],
    // The tests that write coded regions: the mirrored, plain and placement tests never reach
    // writeBatch. coded-write-io counts what each write reads and writes on every shard: the
    // model tests see only bytes, which a write that reads or writes more still gets right.
    only: ['coded 3\\+1: random', 'coded 4\\+2: losing two', 'coded 3\\+1 writes'],
  },
  pager: {
    mutate: [span('src/tier/pager.ts', 'evict', 'findStored')],
    tests: ['test/tier/pager.test.ts', 'test/tier/pager-checksums.test.ts'],
    // The tests that evict (the 4 GiB soak, the async loads and the option checks never reach
    // a line of evict that the others do not), and the checksum tests (evict records the sums).
    only: [
      'reports a page written since epoch',
      'keeps the epoch of a page written as zeros',
      'drops a clean page',
      'shares store slots',
      'verifies bytes before sharing',
      'a store that fails a write',
      'keeps forks, trims and evictions',
      'a frame shared by a fork',
      'counts zero pages dropped',
      // pager-checksums.test.ts
      'checksums \\(',
      'no checksums',
    ],
  },
  'file-store': {
    // The I/O paths: read, write, discard, flush, close, and the loops that finish short
    // reads and writes.
    mutate: [
      span('src/tier/file-store.ts', 'read', 'storeName'),
      span('src/tier/file-store.ts', 'advanceRead'),
    ],
    tests: ['test/tier/file-store.test.ts'],
  },
  heap: {
    // The heap's on-disk format (issue 9): the page map a checkpoint writes and an open reads
    // back, and the superblocks' decoding and choice. Not in the default run (which is scoped to
    // the modules of issue 15 and its 30 minutes): `npm run test:mutation -- heap`.
    extra: true,
    mutate: [span('src/heap/page-map.ts', 'slotWord'), span('src/heap/superblock.ts', 'encodeSuperblock')],
    tests: ['test/heap/page-map.test.ts'],
  },
};
