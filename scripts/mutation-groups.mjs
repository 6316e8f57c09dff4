// Module groups for the mutation run (stryker.config.mjs, scripts/mutation.mjs). Each group mutates
// the modules where a silent bug costs data and runs only the test files that exercise them.
export const groups = {
  memory: {
    mutate: [
      'src/memory/address-space.ts:846-990',
      'src/memory/frame-pool.ts:191-232',
      'src/memory/merger.ts:363-437',
    ],
    // Swapped entries (faults, slot references) exist only with a pager: its tests that evict
    // and fault pages back are the ones that reach those branches.
    tests: [
      'test/memory/address-space.test.ts',
      'test/memory/model.test.ts',
      'test/memory/merger.test.ts',
      'test/tier/pager.test.ts',
    ],
    only: [
      // test/memory: every test
      'a ',
      'reads and writes',
      'scalar accessors',
      'fork shares',
      'trim frees',
      'dirty tracking',
      'exhaustion raises',
      'bad arguments',
      'borrowed pages',
      'every supported page size',
      'identical pages',
      'pages written within',
      'all-zero pages',
      'no frame gets',
      'trust domains',
      'the background merger',
      'destroying every space',
      'address spaces agree',
      // test/tier/pager.test.ts: the tests that evict and fault back (and 'a store that fails')
      'reports a page written since epoch',
      'keeps the epoch of a page written as zeros',
      'drops a clean page',
      'shares store slots',
      'verifies bytes before sharing',
      'keeps forks, trims and evictions',
    ],
  },
  nbd: {
    mutate: ['src/nbd/validate.ts:50-85', 'src/nbd/request-parser.ts:106-198'],
    tests: ['test/nbd/validate.test.ts', 'test/nbd/request-parser.test.ts', 'test/nbd/transmission.test.ts'],
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
  fabric: {
    mutate: ['src/fabric/codec.ts:171-249', 'src/fabric/external-region.ts:311-370'],
    tests: ['test/fabric/codec.test.ts', 'test/fabric/fabric.test.ts'],
    // The codec tests, and of the fabric tests those that write coded regions (writeBatch):
    // the mirrored, plain and placement tests never reach the mutated code.
    only: [
      'any m lost',
      'a stripe coded',
      'ronomon',
      'impossible geometries',
      'a batch takes',
      'zeroPage clears',
      'coded 3\\+1: random',
      'coded 4\\+2: losing two',
    ],
  },
  tier: {
    mutate: ['src/tier/pager.ts:408-460', 'src/tier/file-store.ts:96-156', 'src/tier/file-store.ts:229-279'],
    tests: ['test/tier/pager.test.ts', 'test/tier/file-store.test.ts'],
    // Every file-store test; of the pager tests those that evict (the 4 GiB soak, the async
    // loads and the option checks never reach a mutated line that the others do not).
    only: [
      // file-store.test.ts (all of it)
      'a ',
      'an ',
      'our own',
      'short reads and short writes',
      'unwritten and discarded',
      'each slot has its own',
      // pager.test.ts
      'reports a page written since epoch',
      'keeps the epoch of a page written as zeros',
      'drops a clean page',
      'shares store slots',
      'verifies bytes before sharing',
      'a store that fails a write',
      'keeps forks, trims and evictions',
      'a frame shared by a fork',
      'counts zero pages dropped',
    ],
  },
};
