// StrykerJS configuration for `npm run test:mutation` (see docs/testing.md).
// One config, several module groups: scripts/mutation.mjs runs Stryker once per group with
// MUTATION_GROUP set, so each group mutates only its modules and runs only the test files that
// exercise them. The command runner has no per-test coverage, so every mutant runs the group's
// whole command: keeping the commands to the relevant files is what keeps the run short.
import { groups } from './scripts/mutation-groups.mjs';

const name = process.env.MUTATION_GROUP;
const group = groups[name];
if (group === undefined) {
  throw new Error(
    `MUTATION_GROUP must be one of ${Object.keys(groups).join(', ')} (run it through npm run test:mutation)`,
  );
}

// Test names are matched by their start (node 20 has no --test-skip-pattern).
const only = group.only === undefined ? [] : [`'--test-name-pattern=^(${group.only.join('|')})'`];
// MUTATION=1: property tests that are costly per mutant run fewer cases (see the test files).
const testCommand = [
  'MUTATION=1 node --import tsx --test-reporter=dot',
  ...only,
  'scripts/mutation-tests.mjs',
  ...group.tests,
].join(' ');

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  commandRunner: { command: testCommand },
  checkers: ['typescript'],
  // The mutated modules and what they import, not the tests and benches: the checker re-checks
  // a mutant's dependants, and the whole project has many more.
  tsconfigFile: 'tsconfig.mutation.json',
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  // MUTATION_MUTATE (comma-separated, Stryker's file:lines syntax) narrows a group to part of
  // its modules, e.g. to re-measure one module after adding tests.
  mutate: process.env.MUTATION_MUTATE ? process.env.MUTATION_MUTATE.split(',') : group.mutate,
  // Message text is not behaviour (tests assert error codes), and a mutated message cannot lose data.
  mutator: { excludedMutations: ['StringLiteral'] },
  // Static mutants (module-level constants: limits, lookup tables) are skipped to keep the run
  // short; the mutated ranges are function bodies.
  ignoreStatic: true,
  concurrency: Number(process.env.MUTATION_CONCURRENCY ?? 2),
  // A mutant's run is cut off after timeoutFactor × the unmutated run's time + timeoutMS, and a
  // run cut off counts as detected whether or not its tests would have failed. The unmutated
  // run is timed once, at the start: when the machine's load rises after that, runs that would
  // have passed (survivors) or failed (kills) are cut off alike and the score is inflated.
  // MUTATION_TIMEOUT_FACTOR and MUTATION_TIMEOUT_MS raise the limit on a loaded machine, so
  // that a timeout means a hang (docs/testing.md); a real hang then costs more.
  timeoutFactor: Number(process.env.MUTATION_TIMEOUT_FACTOR ?? 1.5),
  timeoutMS: Number(process.env.MUTATION_TIMEOUT_MS ?? 4000),
  ignorePatterns: ['dist', 'coverage', 'reports', 'bench/results.json', '.tmp'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
  reporters: ['clear-text', 'progress-append-only', 'json', 'html'],
  jsonReporter: { fileName: `reports/mutation/${name}.json` },
  htmlReporter: { fileName: `reports/mutation/${name}.html` },
  thresholds: { high: 90, low: 80, break: null },
  incremental: false,
};
