// Module groups for the mutation run (stryker.config.mjs, scripts/mutation.mjs). Each group mutates
// the modules where a silent bug costs data and runs only the test files that exercise them.
export const groups = {
  memory: {
    mutate: [
      'src/memory/address-space.ts:205-274',
      'src/memory/address-space.ts:564-620',
      'src/memory/address-space.ts:846-1009',
      'src/memory/frame-pool.ts:170-278',
      'src/memory/merger.ts:301-318',
      'src/memory/merger.ts:363-443',
    ],
    tests: ['test/memory/address-space.test.ts', 'test/memory/model.test.ts', 'test/memory/merger.test.ts'],
  },
  nbd: {
    mutate: ['src/nbd/validate.ts', 'src/nbd/request-parser.ts'],
    tests: ['test/nbd/transmission.test.ts'],
  },
  fabric: {
    mutate: [
      'src/fabric/codec.ts:70-249',
      'src/fabric/external-region.ts:311-445',
      'src/fabric/external-region.ts:479-504',
      'src/fabric/external-region.ts:855-873',
    ],
    tests: ['test/fabric/codec.test.ts', 'test/fabric/fabric.test.ts'],
  },
  tier: {
    mutate: ['src/tier/pager.ts:227-262', 'src/tier/pager.ts:408-460', 'src/tier/file-store.ts'],
    tests: ['test/tier/pager.test.ts', 'test/tier/file-store.test.ts'],
  },
};
