// The source tree as plain JavaScript, for the processes the tests start (appliances, the CLI).
//
// Those must run the source under test, never a dist/ that may be older than the tree. Through
// tsx, each start cost about 1 s more CPU than the same code as JavaScript (2.2 s against 1.2 s
// to "appliance listening", measured), and the suite starts a few hundred. So run-tests.mjs
// transpiles src/ once per run with esbuild (what tsx itself uses, so the code is the same; types
// are checked by tsc on their own) and names the result in MEMFABRIC_TEST_BUILD;
// test/support/cli.ts uses it when set, and tsx when a test file is run on its own.
//
// The build lives under node_modules/.cache, so that its imports of packages resolve to this
// checkout's node_modules, with a copy of package.json where src/ looks for the version.
import { copyFileSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

function sources(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) sources(path, out);
    else if (path.endsWith('.ts') && !path.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

/** Transpiles `root`/src into a folder of this process's own; `remove()` deletes it. */
export async function buildForTests(root) {
  const builds = join(root, 'node_modules', '.cache', 'memfabric-test-build');
  mkdirSync(builds, { recursive: true });
  // Builds left by runs that were killed (a run removes its own when it ends).
  for (const name of readdirSync(builds)) {
    if (!alive(Number(name))) rmSync(join(builds, name), { recursive: true, force: true });
  }
  const dir = join(builds, String(process.pid));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  copyFileSync(join(root, 'package.json'), join(dir, 'package.json'));
  await build({
    entryPoints: sources(join(root, 'src')),
    outdir: join(dir, 'src'),
    outbase: join(root, 'src'),
    format: 'esm',
    platform: 'node',
    target: 'node20',
    // Maps beside the files, read only under --enable-source-maps: inline ones cost parse time.
    sourcemap: 'linked',
    logLevel: 'error',
  });
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
