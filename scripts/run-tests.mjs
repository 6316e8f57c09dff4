#!/usr/bin/env node
// Runs every test file under test/ (or the files/folders given) with node's test runner and tsx.
// Node 20's `--test` does not find .ts files by itself, so we list them here.
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { buildForTests } from './test-build.mjs';

/** Test files whose time is shown at the end of a run (scripts/test-timings.mjs keeps it). */
const SLOWEST_SHOWN = 15;

function collect(path, out) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path).sort()) collect(join(path, name), out);
  } else if (path.endsWith('.test.ts')) {
    out.push(path);
  }
}

function printSlowestFiles(timingsFile) {
  let perFile;
  try {
    perFile = Object.entries(JSON.parse(readFileSync(timingsFile, 'utf8')));
  } catch {
    return; // no test finished
  }
  perFile.sort((a, b) => b[1] - a[1]);
  const total = perFile.reduce((sum, [, ms]) => sum + ms, 0);
  console.log(`\nslowest test files (of ${perFile.length}; ${(total / 1000).toFixed(0)} s of tests in all):`);
  for (const [file, ms] of perFile.slice(0, SLOWEST_SHOWN)) {
    console.log(`  ${(ms / 1000).toFixed(1).padStart(7)} s  ${file}`);
  }
}

const roots = process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['test'];
const files = [];
for (const root of roots) collect(root, files);
if (files.length === 0) {
  console.error(`no test files found under ${roots.join(', ')}`);
  process.exit(1);
}

const timingsDir = mkdtempSync(join(tmpdir(), 'memfabric-test-timings-'));
const build = await buildForTests(process.cwd());
let status;
try {
  // --test-force-exit: a file's process exits once its tests are done, even if a handle is left
  // open. Twice under load a fleet test file (etcd3 clients, a controller candidate) passed and
  // then never exited, which would hold CI until its deadline; the cause is not found yet (see
  // docs/testing.md), and a leak must not cost the whole run.
  const result = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--test',
      '--test-force-exit',
      '--test-reporter=spec',
      '--test-reporter-destination=stdout',
      '--test-reporter=./scripts/test-timings.mjs',
      '--test-reporter-destination=stderr',
      // Three files at once on two cores: at two, a quiet run kept the cores 1.55 busy on average
      // (tests wait on restarts, elections, leases and timers), and took 895 s.
      '--test-concurrency=3',
      ...files,
    ],
    {
      stdio: 'inherit',
      env: {
        ...process.env,
        TEST_TIMINGS_FILE: join(timingsDir, 'timings.json'),
        MEMFABRIC_TEST_BUILD: build.dir,
      },
    },
  );
  status = result.status ?? 1;
  printSlowestFiles(join(timingsDir, 'timings.json'));
} finally {
  rmSync(timingsDir, { recursive: true, force: true });
  build.remove();
}
process.exit(status);
