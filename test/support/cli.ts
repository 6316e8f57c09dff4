/**
 * The node arguments that run the `memfabric` command from the tree under test.
 *
 * Never bin/memfabric.js: it prefers a dist/ build, which may be older than the tree. Under
 * scripts/run-tests.mjs, the source transpiled once for this run (MEMFABRIC_TEST_BUILD, see
 * scripts/test-build.mjs), which starts in half the CPU; a test file run on its own runs the
 * source through tsx.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export function memfabricCommand(): string[] {
  const build = process.env.MEMFABRIC_TEST_BUILD;
  if (build !== undefined && build !== '') return [join(build, 'src', 'cli', 'main.js')];
  return ['--import', 'tsx', join(ROOT, 'src', 'cli', 'main.ts')];
}
